"""The network registry: entries, lookup, the table, and every registered network built and run."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer
from torch import nn

from monai_ext.networks import registry
from monai_ext.networks.registry import (
    NetworkEntry,
    create_network,
    get_network_entry,
    list_networks,
    network_table,
    register_network,
)


@pytest.fixture
def toy(monkeypatch):
    entry = NetworkEntry(
        name="toy_conv",
        builder=lambda in_channels=1, out_channels=2: nn.Conv3d(in_channels, out_channels, 1),
        kind="3d",
        title="Toy",
        paper="Nobody 2026, Table 1: toy",
        defaults={"out_channels": 3},
        inferer=lambda **kw: SlidingWindowInferer(**{"roi_size": (8, 8, 8), **kw}),
        bundle="toy_bundle",
        method=9,
    )
    monkeypatch.setitem(registry._REGISTRY, entry.name, entry)
    return entry


def test_create_applies_defaults_then_overrides(toy):
    assert create_network("toy_conv").out_channels == 3
    assert create_network("toy_conv", out_channels=5, in_channels=2).weight.shape[:2] == (5, 2)


def test_inferer_factory_and_default(toy):
    assert toy.make_inferer(overlap=0.5).overlap == 0.5 and toy.make_inferer().roi_size == (8, 8, 8)
    assert isinstance(NetworkEntry("x", nn.Identity, "2d", "X").make_inferer(), SimpleInferer)


def test_unknown_name_lists_the_registered_ones(toy):
    with pytest.raises(KeyError, match="toy_conv"):
        get_network_entry("no_such_net")


def test_duplicate_names_are_refused(toy):
    assert register_network(toy) is toy  # the same entry again is harmless
    with pytest.raises(ValueError, match="already registered"):
        register_network(NetworkEntry("toy_conv", nn.Identity, "3d", "Other"))


def test_bad_kind_or_family():
    with pytest.raises(ValueError, match="kind"):
        NetworkEntry("x", nn.Identity, "4d", "X")
    with pytest.raises(ValueError, match="family"):
        NetworkEntry("x", nn.Identity, "3d", "X", family="timm")


def test_filters_and_table(toy):
    assert toy in list_networks(kind="3d") and toy not in list_networks(kind="2d")
    assert toy not in list_networks(family="monai")
    variant = NetworkEntry("toy_small", nn.Identity, "3d", "Toy small", variant_of="toy_conv", method=9)
    registry._REGISTRY[variant.name] = variant
    try:
        assert variant not in list_networks(main_only=True)
        table = network_table([toy, variant])
    finally:
        del registry._REGISTRY[variant.name]
    assert "| `toy_conv` | Toy | 3d | Nobody 2026, Table 1: toy | `toy_bundle` |  |" in table
    assert table.splitlines()[-1].endswith("| `toy_conv` |")


def test_entries_are_listed_by_method():
    methods = [e.method if e.method is not None else 99 for e in list_networks()]
    assert methods == sorted(methods)
