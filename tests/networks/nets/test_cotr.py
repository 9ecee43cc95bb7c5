import re

import pytest
import torch

from monai_ext.networks.nets import COTR_CONFIGS, CoTr, convert_cotr_release_state_dict, load_cotr_release

TINY = {"encoder_channels": (8, 16, 24, 24), "num_layers": 1, "mlp_dim": 32, "num_heads": 2, "num_points": 2}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _release_name(key: str, num_stages: int = 3) -> str:
    """Our parameter name -> the released ResTranUnet's (written out independently of the loader's rules)."""
    rules = [
        (r"^stem\.0\.", lambda m: "backbone.conv1."),
        (r"^stem\.1\.", lambda m: "backbone.norm1."),
        (r"^encoder_stages\.(\d)\.(\d)\.conv\.", lambda m: f"backbone.layer{int(m[1]) + 1}.{m[2]}.conv1."),
        (r"^encoder_stages\.(\d)\.(\d)\.norm\.", lambda m: f"backbone.layer{int(m[1]) + 1}.{m[2]}.norm1."),
        (r"^encoder_stages\.(\d)\.(\d)\.downsample\.", lambda m: f"backbone.layer{int(m[1]) + 1}.{m[2]}.downsample."),
        (r"^detrans\.layers\.", lambda m: "encoder_Detrans.encoder.layers."),
        (r"^detrans\.level_embed", lambda m: "encoder_Detrans.level_embed"),
        (r"^upsamples\.(\d)\.", lambda m: f"transposeconv_stage{num_stages - 1 - int(m[1])}."),
        (r"^decoder_blocks\.(\d)\.conv(\d)\.", lambda m: f"stage{num_stages - 1 - int(m[1])}_de.resconv{m[2]}.conv."),
        (r"^decoder_blocks\.(\d)\.norm(\d)\.", lambda m: f"stage{num_stages - 1 - int(m[1])}_de.resconv{m[2]}.norm."),
        (r"^deep_heads\.(\d)\.", lambda m: f"ds{num_stages - 1 - int(m[1])}_cls_conv."),
        (r"^out_conv\.", lambda m: "cls_conv."),
    ]
    for pattern, target in rules:
        m = re.match(pattern, key)
        if m:
            return "module.U_ResTran3D." + target(m) + key[m.end() :]
    raise AssertionError(f"unmapped key {key}")


def test_parameter_count_is_the_release():
    net = CoTr()
    assert _count(net) == 41_872_504  # the released ResTranUnet(num_classes=14): 41.87 M
    assert _count(net.stem) + _count(net.encoder_stages) == 20_500_800  # "Backbone Params: 20.50(e6)"
    assert _count(net.detrans) == 9_316_992  # "Transformer Params: 9.32(e6)"


def test_named_variants():
    counts = {name: _count(CoTr(**cfg)) for name, cfg in COTR_CONFIGS.items()}
    assert round(counts["cotr_star"] / 1e6, 1) == 27.9  # paper Table 1
    assert round(counts["cotr_plus"] / 1e6, 1) == 36.9
    assert counts["without_detrans"] == counts["cotr"] - 9_316_992
    assert CoTr(**COTR_CONFIGS["without_detrans"]).detrans is None


def test_release_key_names_load():
    net = CoTr()
    release_keys = {_release_name(k) for k in net.state_dict()}
    assert len(release_keys) == 162  # as many tensors as the released ResTranUnet (instance norm)
    for key in (  # spot checks against the release's module names
        "module.U_ResTran3D.backbone.layer1.0.downsample.0.weight",
        "module.U_ResTran3D.backbone.layer3.1.norm1.bias",
        "module.U_ResTran3D.transposeconv_stage2.weight",
        "module.U_ResTran3D.stage0_de.resconv2.norm.weight",
        "module.U_ResTran3D.ds1_cls_conv.bias",
        "module.U_ResTran3D.encoder_Detrans.encoder.layers.5.self_attn.sampling_offsets.bias",
    ):
        assert key in release_keys


@pytest.mark.parametrize("prefix", ["module.U_ResTran3D.", "U_ResTran3D.", ""])
def test_loader_reproduces_a_renamed_checkpoint(prefix):
    torch.manual_seed(0)
    source = CoTr(out_channels=3, cotr_axis_order=True, dropout_rate=0.0, **TINY).eval()
    with torch.no_grad():
        for name, p in source.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))  # a wrong norm mapping shows in the output
    release = {_release_name(k).replace("module.U_ResTran3D.", prefix): v for k, v in source.state_dict().items()}
    loaded = load_cotr_release({"state_dict": release}, dropout_rate=0.0, **TINY).eval()
    assert loaded.out_channels == 3 and loaded.detrans.cotr_axis_order
    x = torch.randn(1, 1, 8, 32, 32)
    torch.testing.assert_close(loaded(x), source(x))


def test_loader_rejects_unknown_keys():
    with pytest.raises(KeyError, match="no CoTr parameter"):
        convert_cotr_release_state_dict({"U_ResTran3D.something.weight": torch.zeros(1)})


def test_output_shapes_and_deep_supervision():
    net = CoTr(in_channels=2, out_channels=3, **TINY)
    x = torch.randn(2, 2, 8, 32, 48)
    outs = net.train()(x)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 8, 32, 48), (2, 3, 8, 16, 24), (2, 3, 4, 8, 12), (2, 3, 2, 4, 6)]
    sum(o.mean() for o in outs).backward()
    assert net.detrans.layers[0].self_attn.sampling_offsets.weight.grad.abs().sum() > 0  # offsets learn
    with torch.no_grad():
        assert net.eval()(x).shape == (2, 3, 8, 32, 48)
    assert CoTr(deep_supervision=False, **TINY).train()(torch.randn(1, 1, 16, 32, 32)).shape == (1, 14, 16, 32, 32)


def test_without_detrans_and_grid_sample_core():
    x = torch.randn(1, 1, 16, 32, 32)
    assert CoTr(use_detrans=False, **TINY).eval()(x).shape == (1, 14, 16, 32, 32)
    torch.manual_seed(0)
    fast = CoTr(**TINY).eval()
    reference = CoTr(core="grid_sample", **TINY).eval()
    reference.load_state_dict(fast.state_dict())
    torch.testing.assert_close(fast(x), reference(x))


def test_bad_inputs():
    net = CoTr(**TINY)
    with pytest.raises(ValueError, match=r"divisible by \[8, 16, 16\].*pad the input to \[16, 16, 32\]"):
        net(torch.randn(1, 1, 12, 16, 20))
    with pytest.raises(ValueError, match="expects an input"):
        net(torch.randn(1, 2, 8, 16, 16))
    with pytest.raises(ValueError, match="equally wide"):
        CoTr(encoder_channels=(8, 16, 24, 32))
    with pytest.raises(ValueError, match="one more encoder channel"):
        CoTr(encoder_channels=(8, 16, 24), encoder_blocks=(1, 1, 1))
