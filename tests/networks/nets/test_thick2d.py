"""The thickened 2D network: paper configurations with parameter counts, slab layout, one group per call (whole
volumes through the inferer), the early stage apart (early_features, forward_from_early), registry entries and their
bundle's inferer, torchvision weights, TorchScript, errors."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

from monai_ext.bundles import bundle_dir
from monai_ext.inferers import SliceGroupInferer
from monai_ext.networks import create_network, get_network_entry, list_networks
from monai_ext.networks.blocks import ConcatLink, DotLink, EarlyStageMultiplexing, SliceSensitiveAttention
from monai_ext.networks.nets import Thick2DNet, Thickened2DNet, thick2d_inferer
from monai_ext.networks.nets.thick2d import CONFIGS, load_torchvision_resnet

TINY = {"layers": (1, 1, 1, 1), "block_inplanes": (8, 16, 32, 64), "decoder_channels": 16}
TINY["low_level_channels"] = 8
RESNET50_NO_FC = 25_557_032 - (2048 * 1000 + 1000)  # torchvision resnet50 without its classifier: 23,508,032


pytestmark = pytest.mark.usefixtures("one_thread")


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _conv_bn(i: int, o: int, k: int) -> int:
    return i * o * k * k + 2 * o  # bias-free conv + batch norm


def test_paper_configurations_parameter_counts():
    """ResNet-50 (k = 12, 2 classes): the backbone is torchvision's count (stem widened for 12 channels when
    plain), plus the parts this network adds, each counted by hand."""
    k, o = 12, 2
    decoder = _conv_bn(2048, 256, 1) + _conv_bn(256, 48, 1) + _conv_bn(304, 256, 3) + _conv_bn(256, 256, 3)
    esm = _conv_bn(4 * 256, 512, 1) + _conv_bn(512, 256, 1)  # 4 mini-groups of 256, to half, to 256
    link = {  # 1x1 convs with bias, switchable norm (2 C + 6)
        "esm_ssa": 3 * (256 * 256 + 256) + 2 * 256 + 6,
        "esm_concat": 512 * 256 + 256 + 2 * 256 + 6,
        "esm_dot": 256 * 256 + 256 + 2 * 256 + 6,
    }
    counts = {}
    for config in CONFIGS:
        net = Thickened2DNet(out_channels=o, num_slices=k, config=config)
        backbone = sum(_count(m) for m in net.torchvision_modules().values())
        if config == "plain":
            assert backbone == RESNET50_NO_FC + 64 * (k - 3) * 7 * 7  # the stem takes all 12 slices
            head = 256 * k * o + k * o
            assert _count(net) == backbone + decoder + head
        else:
            assert backbone == RESNET50_NO_FC  # the stem takes one mini-group of 3 slices (RGB)
            head = 256 * 3 * o + 3 * o if config != "esm" else 256 * k * o + k * o
            assert _count(net) == backbone + esm + decoder + link.get(config, 0) + head
        counts[config] = _count(net)
    assert counts == {
        "plain": 25_370_872,
        "esm": 25_999_544,
        "esm_ssa": 26_192_812,
        "esm_concat": 26_126_764,
        "esm_dot": 26_061_228,
    }


@pytest.mark.parametrize("config", CONFIGS)
def test_tiny_configurations_shapes_and_blocks(config):
    net = Thickened2DNet(in_channels=2, out_channels=3, num_slices=6, config=config, **TINY).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 2, 32, 48, 6)).shape == (2, 3, 32, 48, 6)
    assert isinstance(net.early_stage, EarlyStageMultiplexing) == (config != "plain")
    expected = {"esm_ssa": SliceSensitiveAttention, "esm_concat": ConcatLink, "esm_dot": DotLink}.get(
        config, nn.Identity
    )
    assert type(net.link) is expected
    assert Thick2DNet is Thickened2DNet


def test_output_layout_channel_s_times_classes_plus_c_is_slice_s_class_c():
    net = Thickened2DNet(out_channels=2, num_slices=6, config="plain", **TINY).eval()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.arange(12.0))
        out = net(torch.randn(1, 1, 32, 32, 6))
    for s in range(6):
        for c in range(2):
            assert torch.all(out[0, c, :, :, s] == s * 2 + c)


def test_input_slices_reach_their_mini_group():
    """With ESM the first mini-group's pre-fusion features see slices 0-2 only."""
    net = Thickened2DNet(num_slices=6, config="esm_ssa", **TINY).eval()
    seen = []
    net.early_stage.early.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = torch.randn(1, 1, 32, 32, 6)
    with torch.no_grad():
        net(x)
    groups = seen[0]  # (2, 3, 32, 32): mini-groups in the batch
    torch.testing.assert_close(groups[0], x[0, 0].permute(2, 0, 1)[:3])
    torch.testing.assert_close(groups[1], x[0, 0].permute(2, 0, 1)[3:])


def test_a_whole_volume_is_the_inferers_job():
    """The network takes exactly one group; SliceGroupInferer slides groups over a volume and averages: a slice
    covered by one group only (the first) gets that group's output."""
    net = Thickened2DNet(num_slices=6, config="esm_dot", **TINY).eval()
    x = torch.randn(1, 1, 32, 32, 14)
    with pytest.raises(ValueError, match=r"one group of 6 slices .* got 14 slices.*SliceGroupInferer\(num_slices=6\)"):
        net(x)
    with torch.no_grad():
        out = SliceGroupInferer(6, stride=4)(x, net)  # groups at 0, 4, 8
        assert out.shape == (1, 2, 32, 32, 14)
        torch.testing.assert_close(out[..., :4], net(x[..., :6])[..., :4])


@pytest.mark.parametrize("config", ["esm", "esm_ssa", "esm_concat", "esm_dot"])
def test_forward_from_early_features_is_forward(config):
    """A group's mini-groups through early_features, then forward_from_early (as one tensor or as separate maps,
    e.g. cached ones): the group's forward. Bit-equal when the early stage sees the same batch as forward's."""
    torch.manual_seed(0)
    net = Thickened2DNet(in_channels=2, out_channels=3, num_slices=6, config=config, **TINY).eval()
    with torch.no_grad():
        for m in net.modules():  # links start as the identity: make the mini-group maps matter
            if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() == 1:
                nn.init.uniform_(m.weight, 0.5, 1.5)
        x = torch.randn(2, 2, 32, 40, 6)
        mini_groups = torch.cat([x[b : b + 1, ..., s : s + 3] for b in range(2) for s in (0, 3)])  # group-major
        early = net.early_features(mini_groups)
        assert early.shape == (4, 32, 8, 10)
        expected = net(x)
        torch.testing.assert_close(net.forward_from_early(early.reshape(2, 2, 32, 8, 10), (32, 40)), expected)
        separate = [[early[0], early[1]], [early[2], early[3]]]
        torch.testing.assert_close(net.forward_from_early(separate, (32, 40)), expected)
        swapped = [[early[1], early[0]], [early[2], early[3]]]
        assert not torch.allclose(net.forward_from_early(swapped, (32, 40)), expected)  # each map is used
        low = net.forward_from_early(separate)  # no size: the logits at the decoder's resolution
        assert low.shape == (2, 3, 8, 10, 6)
        torch.testing.assert_close(net.upsample(low, (32, 40)), expected)


def test_upsample_is_linear_slice_by_slice_so_averaging_commutes_with_it():
    """What lets the inferer average groups at the decoder's resolution and upsample each slice once: upsampling a
    mean of slabs equals the mean of the upsampled slabs, any number of slices, each slice on its own."""
    net = Thickened2DNet(num_slices=6, config="esm", **TINY).eval()
    slabs = torch.randn(3, 2, 2, 8, 10, 5)  # three groups' logits (B, O, h, w, S)
    up = torch.stack([net.upsample(s, (32, 40)) for s in slabs])
    assert up.shape == (3, 2, 2, 32, 40, 5)
    torch.testing.assert_close(net.upsample(slabs.mean(0), (32, 40)), up.mean(0))
    one = torch.nn.functional.interpolate(slabs[0, :, :, :, :, 3], size=(32, 40), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up[0, ..., 3], one)  # slice 3 of the slab alone


def test_early_feature_errors():
    plain = Thickened2DNet(num_slices=6, config="plain", **TINY).eval()
    assert not plain.shares_early_stage and Thickened2DNet(num_slices=6, **TINY).shares_early_stage
    with pytest.raises(ValueError, match="config 'plain' runs its early stage on the whole group"):
        plain.early_features(torch.randn(1, 1, 32, 32, 3))
    with pytest.raises(ValueError, match="config 'plain'"):
        plain.forward_from_early(torch.randn(1, 1, 32, 8, 8), (32, 32))
    net = Thickened2DNet(num_slices=6, config="esm", **TINY).eval()
    with pytest.raises(ValueError, match=r"mini-groups of 3 slices \(N, C, H, W, 3\), got 6"):
        net.early_features(torch.randn(1, 1, 32, 32, 6))
    with pytest.raises(ValueError, match=r"built for 1 input channel"):
        net.early_features(torch.randn(1, 2, 32, 32, 3))
    with pytest.raises(ValueError, match=r"early_features of its 2 mini-groups, each \(32, H/4, W/4\)"):
        net.forward_from_early(torch.randn(1, 3, 32, 8, 8), (32, 32))


def test_torchscript_matches_eager_on_a_group():
    for config in ("plain", "esm_ssa"):
        net = Thickened2DNet(num_slices=6, config=config, **TINY).eval()
        x = torch.randn(1, 1, 32, 32, 6)
        torch.testing.assert_close(torch.jit.script(net)(x), net(x))


def test_training_step_reaches_backbone_and_head():
    net = Thickened2DNet(num_slices=6, config="esm_ssa", **TINY).train()
    out = net(torch.randn(2, 1, 32, 32, 6))
    nn.functional.cross_entropy(out, torch.randint(0, 2, (2, 32, 32, 6))).backward()
    assert net.head.weight.grad.abs().sum() > 0
    assert net.torchvision_modules()["conv1"].weight.grad.abs().sum() > 0
    assert net.link.norm.weight.grad.abs().sum() > 0  # the zero-initialised SSA output norm learns


def _torchvision_resnet50_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with torchvision's ResNet-50 key names and shapes (written from torchvision's layout,
    not from our network)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name, o, i, k):
        state[f"{name}.weight"] = torch.randn(o, i, k, k, generator=gen)

    def bn(name, c):
        state[f"{name}.weight"] = torch.rand(c, generator=gen)
        state[f"{name}.bias"] = torch.randn(c, generator=gen)
        state[f"{name}.running_mean"] = torch.randn(c, generator=gen)
        state[f"{name}.running_var"] = torch.rand(c, generator=gen) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(7)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            conv(f"{p}.conv1", planes, inplanes, 1)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1)
            bn(f"{p}.bn3", planes * 4)
            if b == 0:
                conv(f"{p}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    state["fc.weight"] = torch.randn(1000, 2048, generator=gen)
    state["fc.bias"] = torch.randn(1000, generator=gen)
    return state


def test_loads_a_torchvision_resnet50_state_dict(tmp_path):
    state = _torchvision_resnet50_state()
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    net = Thickened2DNet(num_slices=12, config="esm_ssa", pretrained_path=str(path))
    modules = net.torchvision_modules()
    loaded = {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}
    assert set(loaded) == set(state) - {"fc.weight", "fc.bias"}
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], msg=key)
    # plain: 12 channels in the stem, the RGB kernels averaged and repeated, scaled by 3 / 12
    plain = Thickened2DNet(num_slices=12, config="plain")
    load_torchvision_resnet(plain, str(path))
    stem = plain.torchvision_modules()["conv1"].weight
    assert stem.shape == (64, 12, 7, 7)
    expected = state["conv1.weight"].mean(1, keepdim=True) * 0.25
    torch.testing.assert_close(stem, expected.expand(-1, 12, -1, -1))
    torch.testing.assert_close(stem.sum(1), state["conv1.weight"].sum(1))  # same response to a constant input


def test_torchvision_loading_errors(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision ResNet state dict"):
        Thickened2DNet(num_slices=6, **TINY, pretrained_path=str(bad))
    full = tmp_path / "resnet50.pth"
    torch.save(_torchvision_resnet50_state(), full)
    with pytest.raises(ValueError, match="stage 'conv1' does not match the network"):
        Thickened2DNet(num_slices=6, **TINY, pretrained_path=str(full))


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="config must be one of"):
        Thickened2DNet(config="esm_sa")
    with pytest.raises(ValueError, match=r"num_slices \(10\) must be a multiple of group_size \(3\)"):
        Thickened2DNet(num_slices=10, **TINY)
    assert Thickened2DNet(num_slices=10, config="plain", **TINY).num_slices == 10  # no mini-groups: any k
    with pytest.raises(ValueError, match="output_stride must be 16"):
        Thickened2DNet(output_stride=8, **TINY)
    with pytest.raises(ValueError, match="must be positive"):
        Thickened2DNet(low_level_channels=0)
    with pytest.raises(ValueError, match="need 4 stages"):
        Thickened2DNet(layers=(1, 1, 1), block_inplanes=(8, 16, 32))
    net = Thickened2DNet(num_slices=6, **TINY)
    with pytest.raises(ValueError, match=r"expects a 5D input \(B, C, H, W, D\)"):
        net(torch.randn(1, 6, 32, 32))
    with pytest.raises(ValueError, match="built for 1 input channel"):
        net(torch.randn(1, 2, 32, 32, 6))
    with pytest.raises(ValueError, match=r"at least \[32, 32, 1\]"):
        net(torch.randn(1, 1, 16, 32, 6))
    with pytest.raises(ValueError, match="one group of 6 slices"):
        net(torch.randn(1, 1, 32, 32, 5))


def test_registry_entries_are_the_paper_configurations():
    entries = {e.name: e for e in list_networks() if e.method == 3}
    configs = {"thick2d": "esm_ssa", "thick2d_plain": "plain", "thick2d_esm": "esm", "thick2d_esm_concat": "esm_concat"}
    configs["thick2d_esm_dot"] = "esm_dot"
    assert list(entries) == list(configs)
    assert {name: e.defaults["config"] for name, e in entries.items()} == configs
    for name, e in entries.items():
        assert e.kind == "2.5d" and e.patch == (512, 512, 12) and e.loader is None
        assert e.paper.startswith("Yu et al. 2019, Table 3: ")
        assert (e.variant_of, e.bundle) == (None if name == "thick2d" else "thick2d", "thick2d")
    assert create_network("thick2d", **TINY).config == "esm_ssa"


@pytest.mark.parametrize("name", ["thick2d", "thick2d_plain", "thick2d_esm", "thick2d_esm_concat", "thick2d_esm_dot"])
def test_every_entry_segments_a_non_cubic_volume_through_its_inferer(name):
    entry = get_network_entry(name)
    net = entry.build(num_slices=6, **TINY).eval()
    with torch.no_grad():
        out = entry.make_inferer(num_slices=6)(torch.randn(1, 1, 64, 48, 40), net)
    assert out.shape == (1, 2, 64, 48, 40)


def test_entry_inferer_is_the_bundles_inferer():
    parser = ConfigParser()
    parser.read_config(bundle_dir("thick2d") / "configs" / "inference.json")
    bundle = parser.get_parsed_content("inferer")
    entry = get_network_entry("thick2d").make_inferer()

    def settings(inferer):
        sliding = inferer.sliding
        return (type(inferer), inferer.num_slices, inferer.spatial_dim, inferer.stride, inferer.padding_mode,
                sliding.roi_size, sliding.sw_batch_size, sliding.overlap, sliding.mode,
                inferer.share_early_stage)  # fmt: skip

    assert settings(entry) == settings(bundle) == settings(thick2d_inferer())
    assert entry.share_early_stage  # each mini-group's early stage once: the same output (tests/inferers)
    assert thick2d_inferer(num_slices=15, stride=3).sliding.roi_size == (-1, -1, 15)
    assert entry.num_slices == parser.get_parsed_content("num_slices") == 12
