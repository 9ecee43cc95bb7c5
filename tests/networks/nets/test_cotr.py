import json

import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer

from monai_ext.bundles import bundle_dir
from monai_ext.inferers import FlipInferer
from monai_ext.networks import create_network, get_network_entry, list_networks
from monai_ext.networks.compat import load_cotr_release
from monai_ext.networks.nets import CoTr, cotr_inferer

TINY = {"encoder_channels": (8, 16, 24, 24), "num_layers": 1, "mlp_dim": 32, "num_heads": 2, "num_points": 2}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_is_the_release():
    net = CoTr()
    assert _count(net) == 41_872_504  # the released ResTranUnet(num_classes=14): 41.87 M
    assert _count(net.stem) + _count(net.encoder_stages) == 20_500_800  # "Backbone Params: 20.50(e6)"
    assert _count(net.detrans) == 9_316_992  # "Transformer Params: 9.32(e6)"


def test_registry_entries_are_the_paper_variants():
    entries = {e.name: e for e in list_networks() if e.name.startswith("cotr")}
    assert list(entries) == ["cotr", "cotr_star", "cotr_plus", "cotr_without_detrans", "cotr_single_scale"]
    counts = {name: _count(create_network(name)) for name in entries}
    assert counts["cotr"] == 41_872_504
    assert round(counts["cotr_star"] / 1e6, 1) == 27.9  # paper Table 1
    assert round(counts["cotr_plus"] / 1e6, 1) == 36.9
    assert counts["cotr_without_detrans"] == counts["cotr"] - 9_316_992
    assert create_network("cotr_without_detrans").detrans is None
    main = entries["cotr"]
    assert (main.kind, main.bundle, main.loader, main.patch, main.variant_of) == (
        "3d", "cotr", load_cotr_release, (192, 192, 48), None
    )  # fmt: skip
    assert all(entries[n].variant_of == "cotr" for n in list(entries)[1:])
    assert all(e.paper.startswith("Xie et al. 2021, Table 1: ") for n, e in entries.items() if n != "cotr_single_scale")
    assert entries["cotr_single_scale"].paper == "Xie et al. 2021, Fig. 3: CoTr (single-scale DeTrans)"
    single = create_network("cotr_single_scale")
    assert single.detrans.num_levels == 1 and single.detrans.level_embed.shape == (1, 384)
    per_level = 6 * ((384 + 1) * 6 * 4 * 3 + (384 + 1) * 6 * 4)  # 6 layers' offset and weight heads of one level
    assert counts["cotr_single_scale"] == counts["cotr"] - per_level - 384  # and one level embedding


@pytest.mark.parametrize("spatial_dim, stride, divisors", [(2, (2, 2, 1), [16, 16, 8]), (0, (1, 2, 2), [8, 16, 16])])
def test_stem_stride_and_divisors_follow_the_slice_axis(spatial_dim, stride, divisors):
    net = CoTr(spatial_dim=spatial_dim, **TINY)
    assert net.stem[0].stride == stride and net.final_upsample.scale_factor == tuple(map(float, stride))
    assert net.divisors == divisors


def test_output_shapes_and_deep_supervision():
    net = CoTr(in_channels=2, out_channels=3, **TINY)
    x = torch.randn(2, 2, 32, 48, 8)  # (B, C, H, W, D), slices last
    outs = net.train()(x)
    assert isinstance(outs, list)  # full resolution first, then the heads from the shallowest level
    assert [tuple(o.shape) for o in outs] == [(2, 3, 32, 48, 8), (2, 3, 16, 24, 8), (2, 3, 8, 12, 4), (2, 3, 4, 6, 2)]
    sum(o.mean() for o in outs).backward()
    assert net.detrans.layers[0].self_attn.sampling_offsets.weight.grad.abs().sum() > 0  # offsets learn
    with torch.no_grad():
        y = net.eval()(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3, 32, 48, 8)
    assert CoTr(deep_supervision=False, **TINY).train()(torch.randn(1, 1, 32, 32, 16)).shape == (1, 14, 32, 32, 16)


def test_without_detrans_grid_sample_core_and_trace():
    x = torch.randn(1, 1, 32, 32, 16)
    assert CoTr(use_detrans=False, **TINY).eval()(x).shape == (1, 14, 32, 32, 16)
    torch.manual_seed(0)
    fast = CoTr(**TINY).eval()
    reference = CoTr(core="grid_sample", **TINY).eval()
    reference.load_state_dict(fast.state_dict())
    torch.testing.assert_close(fast(x), reference(x))
    with torch.no_grad():
        traced = torch.jit.trace(fast, x)
        torch.testing.assert_close(traced(x), fast(x))


def test_inferer_is_the_bundles():
    parser = ConfigParser()
    parser.read_config(bundle_dir("cotr") / "configs" / "inference.json")
    bundle = parser.get_parsed_content("inferer")
    assert isinstance(bundle, FlipInferer) and bundle.flips == []  # no mirroring by default: the window alone
    ours = get_network_entry("cotr").make_inferer()
    assert type(ours) is type(bundle.inferer) is SlidingWindowInferer
    settings = ("sw_batch_size", "overlap", "mode", "sigma_scale", "padding_mode", "cval")
    assert {k: getattr(ours, k) for k in settings} == {k: getattr(bundle.inferer, k) for k in settings}
    assert tuple(ours.roi_size) == tuple(bundle.inferer.roi_size)
    assert tuple(ours.roi_size) == get_network_entry("cotr").patch
    assert tuple(cotr_inferer(spatial_dim=0).roi_size) == (48, 192, 192)


def test_bundle_network_is_the_registry_entry():
    for name in ("inference.json", "train.json"):
        config = json.loads((bundle_dir("cotr") / "configs" / name).read_text())["network_def"]
        assert config["_target_"] == "monai_ext.networks.nets.CoTr" and config["spatial_dim"] == 2
        assert "stem_stride" not in config
    parser = ConfigParser()
    parser.read_config(bundle_dir("cotr") / "configs" / "inference.json")
    for key, value in TINY.items():
        parser[f"network_def#{key}"] = value
    bundle = parser.get_parsed_content("network_def")
    ours = create_network("cotr", **TINY)
    assert {k: v.shape for k, v in bundle.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    assert bundle.stem[0].stride == ours.stem[0].stride == (2, 2, 1)


def test_bad_inputs():
    net = CoTr(**TINY)
    with pytest.raises(ValueError, match=r"divisible by \[16, 16, 8\], got \[16, 20, 12\]; pad the input"):
        net(torch.randn(1, 1, 16, 20, 12))
    with pytest.raises(ValueError, match="1 input channel"):
        net(torch.randn(1, 2, 16, 16, 8))
    with pytest.raises(ValueError, match="expects a 5D input"):
        net(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="equally wide"):
        CoTr(encoder_channels=(8, 16, 24, 32))
    with pytest.raises(ValueError, match="one more encoder channel"):
        CoTr(encoder_channels=(8, 16, 24), encoder_blocks=(1, 1, 1))
    with pytest.raises(ValueError, match="spatial_dim"):
        CoTr(spatial_dim=4)


def test_detrans_levels_choose_the_levels_detrans_takes():
    x = torch.randn(1, 1, 32, 32, 16)
    single = CoTr(out_channels=3, detrans_levels=1, **{**TINY, "encoder_channels": (8, 16, 24, 36)}).eval()
    assert single.detrans.hidden_size == 36 and single.detrans.num_levels == 1
    seen = []
    single.detrans.register_forward_hook(lambda m, args, out: seen.append([tuple(t.shape) for t in args[0]]))
    assert single(x).shape == (1, 3, 32, 32, 16)
    assert seen == [[(1, 36, 2, 2, 2)]]  # the deepest level only
    three = CoTr(out_channels=3, detrans_levels=3, **{**TINY, "encoder_channels": (8, 24, 24, 24)}).eval()
    assert three.detrans.num_levels == 3 and three(x).shape == (1, 3, 32, 32, 16)
    with pytest.raises(ValueError, match="last 3 encoder levels and needs them equally wide"):
        CoTr(detrans_levels=3, **TINY)
    with pytest.raises(ValueError, match="detrans_levels must lie in"):
        CoTr(detrans_levels=0, **TINY)


def test_relu_option_replaces_every_cnn_activation():
    net = CoTr(act_name="relu", **TINY)
    acts = [type(m) for m in net.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU))]
    assert acts and set(acts) == {torch.nn.ReLU}
    assert {type(m) for m in CoTr(**TINY).modules() if isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU))} == {
        torch.nn.LeakyReLU
    }
    assert isinstance(net.detrans.layers[0].activation, torch.nn.GELU)  # the FFN keeps GELU


@pytest.mark.parametrize(
    "settings",
    [{}, {"core": "grid_sample"}, {"detrans_levels": 1, "encoder_channels": (8, 16, 24, 36)}, {"use_detrans": False}],
)
def test_torchscript_equals_eager(settings, tmp_path):
    torch.manual_seed(0)
    net = CoTr(out_channels=3, **{**TINY, **settings}).eval()
    x = torch.randn(1, 1, 32, 32, 16)
    torch.jit.save(torch.jit.script(net), tmp_path / "net.ts")
    scripted = torch.jit.load(tmp_path / "net.ts")
    with torch.no_grad():  # eager runs small maps on oneDNN (OneDNNConv3d), TorchScript on aten's dispatch: round-off
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(scripted(torch.randn(1, 1, 16, 48, 8)).shape, (1, 3, 16, 48, 8))  # any size
    net.train()
    scripted.train()
    with torch.no_grad():
        outs = scripted(x)
    assert [o.shape for o in outs] == [o.shape for o in net(x)]  # the deep-supervision list in training


def test_torchscript_with_the_release_axes():
    from monai_ext.networks.compat import use_cotr_release_axes

    torch.manual_seed(0)
    net = use_cotr_release_axes(CoTr(out_channels=3, **TINY)).eval()
    for layer in net.detrans.layers:
        torch.nn.init.normal_(layer.self_attn.sampling_offsets.weight, std=0.1)  # offsets that depend on the query
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(net)(x), net(x), rtol=1e-4, atol=1e-5)  # round-off: OneDNNConv3d


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = CoTr(out_channels=3, **TINY).eval()
    for layer in net.detrans.layers:
        torch.nn.init.normal_(layer.self_attn.sampling_offsets.weight, std=0.1)  # samples off the voxel centres
    x = torch.randn(1, 1, 32, 32, 16)
    path = str(tmp_path / "cotr.onnx")
    torch.onnx.export(net, (x,), path, dynamo=False, opset_version=17, input_names=["image"], output_names=["pred"])
    got = ort.InferenceSession(path).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        assert abs(got - net(x).numpy()).max() < 1e-4
