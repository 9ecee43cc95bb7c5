"""The bench's rows come from the network registry: names, order, fixed-size networks, windows."""

from __future__ import annotations

import pytest
from monai.inferers import SlidingWindowInferer
from torch import nn

from monai_ext.bench.rows import REFERENCE, bench_rows, build, inferer
from monai_ext.inferers import PadInferer, SharedBuffersInferer
from monai_ext.networks import NetworkEntry, get_network_entry, list_networks
from monai_ext.networks import registry as network_registry


class _FixedSize(nn.Conv3d):
    def __init__(self, in_channels: int = 1, out_channels: int = 2, img_size=(8, 8, 8)) -> None:
        super().__init__(in_channels, out_channels, 1)
        self.img_size = tuple(img_size)


@pytest.fixture
def fixed_size(monkeypatch):
    entry = NetworkEntry(
        "toy_fixed", _FixedSize, "3d", "Toy", defaults={"img_size": (8, 8, 8)},
        inferer=lambda **kw: SlidingWindowInferer(**{"roi_size": (8, 8, 8), **kw}),
    )  # fmt: skip
    monkeypatch.setitem(network_registry._REGISTRY, entry.name, entry)
    return entry


def test_default_rows_are_the_main_entries_in_registry_order():
    rows = bench_rows()
    assert rows == list_networks(main_only=True)
    names = [e.name for e in rows]
    assert REFERENCE in names and {"dynunet_2d", "swinunetr", "unetr"} <= set(names)
    assert all(e.variant_of is None for e in rows)


def test_named_rows_keep_the_given_order_and_unknown_names_are_refused():
    assert [e.name for e in bench_rows(["unetr", "dynunet_3d"])] == ["unetr", "dynunet_3d"]
    with pytest.raises(ValueError, match=r"unknown networks \['nope'\]; registered: .*dynunet_3d"):
        bench_rows(["dynunet_3d", "nope"])


def test_fixed_size_networks_are_built_for_the_patch_and_windows_take_the_patch(fixed_size):
    net = build(fixed_size, 2, 3, (16, 8, 4))
    assert net.img_size == (16, 8, 4) and (net.in_channels, net.out_channels) == (2, 3)
    assert inferer(fixed_size, [16, 8, 4]).roi_size == (16, 8, 4)
    assert build(get_network_entry("dynunet_3d"), 1, 2, (16, 8, 4)).in_channels == 1  # others ignore the patch


def test_slice_wise_inferers_are_the_entries_own():
    slice_wise = inferer(get_network_entry("dynunet_2d"), (64, 64, 32))
    assert isinstance(slice_wise, PadInferer) and slice_wise.divisor == [32, 32, 1]
    own = get_network_entry("dynunet_3d").make_inferer()
    window = inferer(get_network_entry("dynunet_3d"), (64, 64, 32))
    assert window.roi_size == (64, 64, 32) and (window.overlap, window.mode) == (own.overlap, own.mode)


def test_a_window_inside_shared_buffers_takes_the_patch_and_keeps_the_wrapper():
    wrapped = inferer(get_network_entry("ssh_unet"), (64, 64, 32))
    assert isinstance(wrapped, SharedBuffersInferer) and wrapped.inferer.roi_size == (64, 64, 32)
