"""MONAI's baselines in the registry: published sizes, their inferers on non-cubic volumes, the 2.5D slice inferer."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SliceInferer, SlidingWindowInferer
from monai.networks.nets import DynUNet

from monai_ext.inferers import NeighbourSliceInferer, PadInferer
from monai_ext.networks import create_network, get_network_entry, list_networks
from monai_ext.networks.nets.baselines import dynunet, dynunet_strides

NAMES = ["dynunet_3d", "dynunet_2d", "dynunet_2_5d", "swinunetr", "unetr"]

# parameter counts at 14 classes; the anchors of ../shared/design/performance.md
PARAMETERS = {
    "dynunet_3d": 31_189_806,
    "dynunet_2d": 10_705_134,
    "dynunet_2_5d": 10_705_134 + 2 * 32 * 3 * 3,  # two more input channels on the first 3 x 3 convolution
    "swinunetr": 62_187_296,
    "unetr": 92_802_478,
}

# small overrides, and a window small enough for a quick CPU test where the default is a 96^3 window
SMALL = {
    "dynunet_3d": ({"filters": (4, 8, 16)}, {}),
    "dynunet_2d": ({"filters": (4, 8, 8, 8, 8, 8)}, {}),
    "dynunet_2_5d": ({"filters": (4, 8, 8, 8, 8, 8)}, {}),
    "swinunetr": ({"feature_size": 12}, {"roi_size": (64, 64, 64)}),
    "unetr": ({"img_size": (32, 32, 32), "hidden_size": 48, "mlp_dim": 96, "num_heads": 4, "feature_size": 4},
              {"roi_size": (32, 32, 32)}),
}  # fmt: skip


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_the_baselines_are_registered_as_monai_entries():
    entries = {e.name: e for e in list_networks(family="monai")}
    assert set(entries) >= set(NAMES)
    assert {n: entries[n].kind for n in NAMES} == {
        "dynunet_3d": "3d", "dynunet_2d": "2d", "dynunet_2_5d": "2.5d", "swinunetr": "3d", "unetr": "3d"
    }  # fmt: skip
    assert all(entries[n].variant_of is None and entries[n].bundle is None for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_published_parameter_counts(name):
    assert _count(create_network(name, in_channels=1, out_channels=14)) == PARAMETERS[name]


@pytest.mark.parametrize("name", NAMES)
def test_each_baseline_runs_through_its_inferer_on_a_non_cubic_volume(name):
    build, infer = SMALL[name]
    entry = get_network_entry(name)
    torch.manual_seed(0)
    net = create_network(name, in_channels=2, out_channels=3, **build).eval()
    with torch.inference_mode():
        out = entry.make_inferer(**infer)(torch.randn(1, 2, 64, 48, 40), net)
    assert out.shape == (1, 3, 64, 48, 40) and torch.isfinite(out).all()


def test_slice_wise_baselines_use_monai_slice_inferer_padded_in_plane():
    two_d, neighbours = (get_network_entry(n).make_inferer() for n in ("dynunet_2d", "dynunet_2_5d"))
    assert isinstance(two_d, PadInferer) and type(two_d.inferer) is SliceInferer
    assert two_d.inferer.spatial_dim == 2 and two_d.padded_size([50, 40, 7]) == [64, 64, 7]
    assert isinstance(neighbours.inferer, NeighbourSliceInferer) and neighbours.inferer.neighbours == 1
    axial = get_network_entry("dynunet_2d").make_inferer(spatial_dim=0)
    assert axial.inferer.spatial_dim == 0 and axial.padded_size([7, 50, 40]) == [7, 64, 64]
    assert isinstance(get_network_entry("dynunet_3d").make_inferer(), SlidingWindowInferer)


def test_slice_inferer_equals_the_2d_network_slice_by_slice():
    torch.manual_seed(0)
    net = create_network("dynunet_2d", in_channels=1, out_channels=2, filters=(4, 8, 8)).eval()
    x = torch.randn(1, 1, 8, 12, 5)
    with torch.inference_mode():
        out = get_network_entry("dynunet_2d").make_inferer(divisor=4)(x, net)
        by_hand = torch.stack([net(x[..., d]) for d in range(5)], dim=-1)
    torch.testing.assert_close(out, by_hand)


def test_2_5d_network_has_the_neighbour_channels():
    net = create_network("dynunet_2_5d", in_channels=2, out_channels=3, neighbours=2, filters=(4, 8, 8))
    assert isinstance(net, DynUNet) and net.in_channels == 2 * 5


def test_dynunet_strides_stop_halving_thin_axes():
    assert dynunet_strides((192, 192, 48), 6) == [(1, 1, 1)] + [(2, 2, 2)] * 3 + [(2, 2, 1)] * 2
    assert dynunet_strides((128, 128, 128), 6) == [(1, 1, 1)] + [(2, 2, 2)] * 5
    net = dynunet(3, 1, 2, filters=(4, 8, 8, 8, 8, 8), strides=dynunet_strides((64, 64, 16), 6))
    with torch.inference_mode():
        assert net.eval()(torch.randn(1, 1, 64, 64, 16)).shape == (1, 2, 64, 64, 16)


def test_bad_arguments():
    with pytest.raises(ValueError, match="one stride per level"):
        dynunet(filters=(4, 8), strides=[1, 2, 2])
    with pytest.raises(ValueError, match="neighbours"):
        create_network("dynunet_2_5d", neighbours=-1)
    with pytest.raises(ValueError, match="spatial_dim"):
        get_network_entry("dynunet_2d").make_inferer(spatial_dim=3)
    with pytest.raises(ValueError, match="num_levels"):
        dynunet_strides((8, 8, 8), 0)
