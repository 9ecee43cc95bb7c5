import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from monai_ext.bundles import bundle_dir
from monai_ext.inferers import ContextSliceInferer, PadInferer
from monai_ext.networks import create_network, get_network_entry, list_networks
from monai_ext.networks.layout import take_slices
from monai_ext.networks.nets import SCAA, SliceContext, SpatialContextAwareNet, scaa_inferer, scaa_sizes
from monai_ext.networks.nets.scaa import CONFIGURATIONS, _SliceInstanceNorm

TINY = {"filters": (4, 8, 8, 16, 16), "context_channels": (4, 4, 8, 8), "global_channels": 4}
PAPER_PARAMS = 7.82e6


def _net(configuration="SCAA*", **kwargs):
    torch.manual_seed(0)
    return SCAA(1, 3, configuration=configuration, **{**TINY, **kwargs})


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_beside_the_paper():
    counts = {c: _count(SCAA(1, 14, configuration=c)) for c in CONFIGURATIONS}
    print({c: f"{n / 1e6:.2f} M" for c, n in counts.items()}, f"paper: {PAPER_PARAMS / 1e6:.2f} M")
    net = SCAA(1, 14)
    parts = {"3D context encoder": net.context_encoder, "2D encoder": net.encoders, "MSFA": net.msfa}
    parts.update({"2D decoder": net.decoders, "heads": [net.head, net.aux_head]})
    print({k: f"{_count(nn.ModuleList(v) if isinstance(v, list) else v):,}" for k, v in parts.items()})
    assert counts["SCAA*"] == 7_750_948  # our reading of the paper's layout, see docs/scaa.md
    assert abs(counts["SCAA*"] / PAPER_PARAMS - 1) < 0.02
    assert counts["CA"] < counts["C-CA"] < counts["SCAA*"] < counts["SCAA"]  # C-CA has no query/key/merge


def test_decoder_channels_option():
    filters = (64, 96, 128, 192, 256)
    assert [d.conv_block.conv2.conv.out_channels for d in SCAA(1, 14).decoders] == [192, 128, 96, 64, 64]
    classic = SCAA(1, 14, decoder_channels=filters)  # decoder levels as wide as their skips (the earlier default)
    assert _count(classic) == 9_425_188
    net = _net(decoder_channels=(4, 4, 8, 8, 16)).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 64, 64, 32)).shape == (1, 3, 64, 64, 32)


@pytest.mark.parametrize("configuration", list(CONFIGURATIONS))
def test_whole_volume_output_shape(configuration):
    net = _net(configuration).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 64, 96, 32)).shape == (1, 3, 64, 96, 32)


def test_sizes_it_takes():
    assert scaa_sizes() == (32, (64, 64, 32))
    assert scaa_sizes(4, spatial_dim=0) == (16, (16, 32, 32))
    net = _net(spatial_dim=1)
    assert (net.divisor, net.min_size) == (32, (64, 32, 64))


@pytest.mark.parametrize("spatial_dim", [0, 2])
def test_training_forward_is_a_list_and_equals_whole_volume_at_the_given_slices(spatial_dim):
    net = _net("SCAA", spatial_dim=spatial_dim).eval()
    sizes = [64, 64, 64]
    sizes[spatial_dim] = 32
    x = torch.rand(2, 1, *sizes)
    idx = torch.tensor([[0, 7, 31], [3, 4, 20]])
    with torch.no_grad():
        whole = net(x)
        out = net(x, idx)
    assert isinstance(out, list) and len(out) == 2
    slices, aux = out
    torch.testing.assert_close(slices, take_slices(whole, idx, spatial_dim), atol=1e-5, rtol=1e-5)
    assert slices.shape[2 + spatial_dim] == 3
    assert aux.shape == (2, 3, *[s // 2 for s in sizes])  # the auxiliary head at half resolution


def test_the_two_stages_and_the_auxiliary_head():
    net = _net("SCAA").eval()
    x = torch.rand(1, 1, 64, 64, 32)
    with torch.no_grad():
        context = net.encode_context(x)
        assert isinstance(context, SliceContext)
        # F3D_i 2^i smaller on every axis, in the input's layout (slices last)
        assert [tuple(f.shape) for f in context.features] == [(1, 4, 16, 16, 8), (1, 4, 8, 8, 4), (1, 8, 4, 4, 2),
                                                              (1, 8, 2, 2, 1)]  # fmt: skip
        assert context.descriptor.shape == (1, 4)
        torch.testing.assert_close(net.forward_slices(x, context, torch.arange(32)), net(x))
        aux = net.forward_aux(context)
        assert aux.shape == (1, 3, 32, 32, 16)
        expected = F.interpolate(net.aux_head(context.features[-1]), scale_factor=16, mode="trilinear")
        torch.testing.assert_close(aux, expected, atol=1e-6, rtol=1e-5)
    assert _net("SCAA*").eval().encode_context(x).descriptor is None


def test_one_index_vector_serves_every_volume():
    net = _net().eval()
    x = torch.rand(2, 1, 64, 64, 32)
    with torch.no_grad():
        a, _ = net(x, torch.tensor([1, 9]))
        b, _ = net(x, torch.tensor([[1, 9], [1, 9]]))
    torch.testing.assert_close(a, b)


def test_attention_over_depth_is_returned_per_scale():
    net = _net("SCAA").eval()
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        logits, attention = net.forward_slices(x, net.encode_context(x), torch.arange(40), return_attention=True)
    assert logits.shape == (1, 3, 64, 64, 40)
    # depth 64: F3D_i has 64 / 2^i slices; heads 2, 2, 4, 4
    assert [tuple(a.shape) for a in attention] == [(1, 40, 2, 16), (1, 40, 2, 8), (1, 40, 4, 4), (1, 40, 4, 2)]
    for a in attention:
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    ca = _net("CA").eval()
    _, none = ca.forward_slices(x, ca.encode_context(x), [0], return_attention=True)
    assert none == []


def test_training_step_reaches_every_parameter():
    net = _net("SCAA")
    # 64 slices: F3D_5 has 2 depth slices, so even the deepest attention has something to choose
    slices, aux = net(torch.rand(1, 1, 64, 64, 64), torch.tensor([2, 50]))
    (slices.square().mean() + aux.square().mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_traced_whole_volume_forward_matches():
    net = _net("SCAA*").eval()
    x = torch.rand(1, 1, 64, 64, 32)
    traced = torch.jit.trace(net, x)
    torch.testing.assert_close(traced(x), net(x), atol=1e-5, rtol=1e-5)


def test_alias():
    assert SCAA is SpatialContextAwareNet


def test_registry_builds_every_configuration_by_name():
    entries = {e.name: e for e in list_networks() if e.method == 2}
    assert list(entries) == ["scaa_star", "scaa", "scaa_c_ca", "scaa_ca"]
    assert entries["scaa_star"].variant_of is None and entries["scaa_star"].bundle == "scaa"
    assert all(e.variant_of == "scaa_star" and e.kind == "context" for n, e in entries.items() if n != "scaa_star")
    for name, configuration in [("scaa_star", "SCAA*"), ("scaa", "SCAA"), ("scaa_c_ca", "C-CA"), ("scaa_ca", "CA")]:
        net = create_network(name, out_channels=3, **TINY)
        assert net.configuration == configuration and configuration in entries[name].paper
    assert _count(create_network("scaa_star")) == 7_750_948


@pytest.mark.parametrize("name", ["scaa_star", "scaa_c_ca"])
def test_registry_entry_runs_through_its_inferer_on_a_non_cubic_volume(name):
    entry = get_network_entry(name)
    net = entry.build(out_channels=3, **TINY).eval()
    x = torch.rand(1, 1, 64, 48, 40)
    with torch.no_grad():
        out = entry.make_inferer(slice_chunk=16)(x, net)
        padded = F.pad(x, (0, 24, 0, 16))
        expected = net(padded, valid_size=[64, 48, 40])[..., :48, :40]  # the network on the padded volume, cropped
        unmasked = net(padded)[..., :48, :40]
    assert out.shape == (1, 3, 64, 48, 40)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # 24 padded slices of 64: MSFA masks them (C-CA has no attention over depth, nothing to mask)
    assert (out - unmasked).abs().max() > 1e-3 if name == "scaa_star" else torch.allclose(out, unmasked, atol=1e-5)


def test_registry_inferer_is_the_bundles():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(bundle_dir("scaa") / "configs" / "inference.json")
    bundle = parser.get_parsed_content("inferer")
    registry = get_network_entry("scaa_star").make_inferer()
    for inferer in (bundle, registry):
        assert type(inferer) is PadInferer and type(inferer.inferer) is ContextSliceInferer
    assert (bundle.divisor, tuple(bundle.min_size), bundle.mode) == (registry.divisor, registry.min_size, registry.mode)
    assert bundle.inferer.slice_chunk == registry.inferer.slice_chunk
    assert scaa_inferer(levels=4, spatial_dim=0).min_size == (16, 32, 32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"configuration": "SCAA**"}, "configuration must be one of"),
        ({"num_heads": (2, 2, 4)}, "one entry per MSFA scale"),
        ({"spatial_dim": 4}, "spatial_dim counts spatial axes"),
        ({"decoder_channels": (4, 8, 8, 16)}, "decoder_channels needs one positive width per level"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _net(**kwargs)


def test_bad_inputs():
    net = _net()
    with pytest.raises(ValueError, match="built for 1 input channel"):
        net(torch.rand(1, 2, 64, 64, 32))
    with pytest.raises(ValueError, match="expects a 5D input"):
        net(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"divisible by \[32, 32, 32\].*PadInferer"):
        net(torch.rand(1, 1, 64, 64, 40))
    with pytest.raises(ValueError, match=r"at least \[64, 64, 32\]"):
        net(torch.rand(1, 1, 32, 64, 32))
    with pytest.raises(ValueError, match=r"must lie in \[0, 32\)"):
        net(torch.rand(1, 1, 64, 64, 32), torch.tensor([0, 32]))
    with pytest.raises(ValueError, match="slice_indices must be"):
        net(torch.rand(2, 1, 64, 64, 32), torch.zeros(3, 2, dtype=torch.long))


def test_padded_depth_slices_take_no_attention():
    net = _net("SCAA").eval()
    x = torch.rand(1, 1, 64, 64, 64)
    x[..., 40:] = 0  # 24 padded slices at the far end
    with torch.no_grad():
        context = net.encode_context(x)
        _, masked = net.forward_slices(x, context, [0, 20, 39], return_attention=True, valid_size=[64, 64, 40])
        _, plain = net.forward_slices(x, context, [0, 20, 39], return_attention=True)
    for scale, (a, p) in enumerate(zip(masked, plain), start=2):
        valid = -(-40 // 2**scale)  # F3D slices holding image content: 10, 5, 3, 2 of 16, 8, 4, 2
        assert a.shape[-1] == 64 // 2**scale
        assert (a[..., valid:] == 0).all() and (p[..., valid : valid + 1] > 0).all()
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    with torch.no_grad():
        whole = net(x, valid_size=[64, 64, 40])
        torch.testing.assert_close(net(x, torch.tensor([3, 39]), valid_size=[64, 64, 40])[0], whole[..., [3, 39]])
    with pytest.raises(ValueError, match="valid_size must give the unpadded size"):
        net(x, valid_size=[64, 64, 65])


@pytest.mark.parametrize("configuration", ["SCAA*", "C-CA", "CA"])
def test_torchscript_equals_eager(configuration, tmp_path):
    net = _net(configuration).eval()
    x = torch.rand(1, 1, 64, 64, 64)
    torch.jit.save(torch.jit.script(net), tmp_path / "net.ts")
    scripted = torch.jit.load(tmp_path / "net.ts")
    # eager runs the context encoder's small maps on oneDNN (OneDNNConv3d), TorchScript on aten's dispatch: round-off
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(scripted(x, valid_size=[64, 64, 40]), net(x, valid_size=[64, 64, 40]))
        x = torch.rand(1, 1, 64, 96, 32)  # another size: nothing is fixed at export
        idx = torch.tensor([[1, 30]])
        for got, want in zip(scripted(x, idx), net(x, idx)):  # the training call: [slice logits, aux logits]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_onnx_export_with_dynamic_sizes_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = _net("SCAA").eval()
    path = str(tmp_path / "scaa.onnx")
    axes = {2: "h", 3: "w", 4: "d"}
    torch.onnx.export(
        net, (torch.rand(1, 1, 64, 64, 64),), path, dynamo=False, opset_version=17, input_names=["image"],
        output_names=["pred"], dynamic_axes={"image": axes, "pred": axes},
    )  # fmt: skip
    session = ort.InferenceSession(path)
    for shape in ((1, 1, 64, 64, 64), (1, 1, 96, 64, 32)):  # 96: MSFA pools 24 x 16 maps to 16 x 16, no factor
        x = torch.rand(*shape)
        with torch.no_grad():
            expected = net(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == expected.shape
        assert abs(got - expected).max() < 1e-4


def _plain_layout(net):
    """A copy of ``net`` with its 2D path as MONAI builds it: NCHW conv weights and aten's instance norm."""
    plain = copy.deepcopy(net)
    for module in plain.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            module.weight.data = module.weight.data.contiguous()
        for name, child in module.named_children():
            if type(child) is _SliceInstanceNorm:
                norm = nn.InstanceNorm2d(child.num_features, child.eps, affine=child.affine)
                norm.load_state_dict(child.state_dict())
                setattr(module, name, norm)
    return plain


@pytest.mark.parametrize("affine", [False, True])
def test_slice_instance_norm_equals_instance_norm_in_either_layout(affine):
    torch.manual_seed(0)
    norm = nn.InstanceNorm2d(6, affine=affine)
    if affine:
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    fast = _SliceInstanceNorm(norm)
    assert fast.state_dict().keys() == norm.state_dict().keys()
    x = torch.randn(3, 6, 10, 7) * 3 + 2
    for layout in (torch.contiguous_format, torch.channels_last):
        for overwrite, mode in [(False, torch.enable_grad), (True, torch.no_grad)]:
            given = x.contiguous(memory_format=layout)
            with mode():
                out = _SliceInstanceNorm(norm, overwrite)(given)
            torch.testing.assert_close(out, norm(x), atol=1e-5, rtol=1e-5)
            assert out.is_contiguous(memory_format=torch.channels_last)  # the 2D path's layout
            in_place = overwrite and layout == torch.channels_last
            assert (out.data_ptr() == given.data_ptr()) == in_place
            if not in_place:
                assert torch.equal(given, x)
    half = x.bfloat16()  # what autocast's convolutions hand over: normalised in float32
    out = fast(half)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, norm(half.float()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("configuration, norm_name", [("SCAA*", "instance"), ("C-CA", ("instance", {"affine": True}))])
def test_channels_last_2d_path_equals_the_plain_layout(configuration, norm_name):
    net = _net(configuration, norm_name=norm_name).eval()
    plain = _plain_layout(net)
    assert net.state_dict().keys() == plain.state_dict().keys()
    assert net.head.weight.is_contiguous(memory_format=torch.channels_last)
    layouts = []
    net.decoders[-1].register_forward_hook(
        lambda m, a, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last))
    )
    x = torch.rand(1, 1, 64, 64, 32)
    odd = torch.rand(1, 1, 50, 70, 20)  # padded by the registry inferer
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(scaa_inferer()(odd, net), scaa_inferer()(odd, plain), atol=1e-5, rtol=1e-5)
    assert layouts and all(layouts)  # the full-resolution decoder level ran channels-last


def test_inference_without_the_decoder_concatenation_equals_the_training_path():
    net = _net().eval()
    x = torch.rand(1, 1, 64, 64, 32)
    with torch.no_grad():  # each decoder's first conv runs on its two parts, summed in place
        fast = net(x)
    torch.testing.assert_close(fast, net(x).detach(), atol=1e-5, rtol=1e-5)  # with autograd: the concatenation


def test_under_autocast_the_decoder_keeps_its_concatenation(monkeypatch):
    net = _net().eval()
    calls = []
    real_cat = torch.cat
    monkeypatch.setattr(torch, "cat", lambda *a, **k: calls.append(1) or real_cat(*a, **k))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        net(torch.rand(1, 1, 64, 64, 32))
    with_autocast = len(calls)
    calls.clear()
    with torch.no_grad():
        net(torch.rand(1, 1, 64, 64, 32))
    assert with_autocast - len(calls) == len(net.decoders)  # one concatenation per decoder under autocast only
