import pytest

from monai_ext.bench.registry import NETWORKS, BenchNetwork, register

# parameter counts at 14 classes; the anchors match ../shared/design/performance.md
EXPECTED = {
    "DynUNet 3D": 31_189_806,
    "DynUNet 2D": 10_705_134,
    "SwinUNETR": 62_187_296,
    "UNETR": 92_802_478,
    "SSH-UNet": 6_487_822,
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_rows_build_their_published_configurations(name):
    net = NETWORKS[name].build(1, 14, (96, 96, 96))
    assert sum(p.numel() for p in net.parameters()) == EXPECTED[name]


def test_the_reference_and_the_anchors_are_registered():
    assert list(NETWORKS)[0] == "DynUNet 3D"
    assert {n for n, e in NETWORKS.items() if e.family == "monai"} >= {"DynUNet 3D", "DynUNet 2D", "SwinUNETR", "UNETR"}


def test_register_adds_and_replaces(monkeypatch):
    monkeypatch.setattr("monai_ext.bench.registry.NETWORKS", dict(NETWORKS))
    from monai_ext.bench import registry

    row = register(BenchNetwork("mine", lambda i, o, r: None, "3d"))
    assert registry.NETWORKS["mine"] is row and list(registry.NETWORKS)[-1] == "mine"
