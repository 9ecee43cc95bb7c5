import pytest
import torch
from monai.networks.nets import DynUNet

from monai_ext.networks.blocks import to_view
from monai_ext.networks.nets import SSHUNet

SMALL = {"out_channels": 3, "filters": [8, 16, 32, 64], "strides": [1, 2, 2, 2]}


def test_released_configuration_parameter_count():
    assert sum(p.numel() for p in SSHUNet(in_channels=1, out_channels=14).parameters()) == 6_487_822


def test_loads_and_reproduces_the_release(golden):
    g = golden("ssh_unet_network")
    cfg = g["config"]
    net = SSHUNet(
        in_channels=cfg["in_channels"], out_channels=cfg["out_channels"], kernel_size=cfg["kernel_size"],
        strides=cfg["strides"], filters=cfg["filters"], shift_levels=cfg["gate_pos"],
        shift_bottleneck=cfg["gate_in_bottleneck"], shift_decoder=cfg["gate_dec"],
    ).eval()  # fmt: skip
    net.load_state_dict(g["state_dict"])  # strict: the release's keys (with its skip_layers aliases) all map
    with torch.no_grad():
        torch.testing.assert_close(net(g["x"]), g["y"], atol=1e-5, rtol=1e-4)


def test_released_shift_placement():
    net = SSHUNet(**SMALL)
    shifting = lambda block: not isinstance(block.shift, torch.nn.Identity)  # noqa: E731
    assert shifting(net.input_block) and all(shifting(b) for b in net.downsamples) and shifting(net.bottleneck)
    # the release's decoder rule: the block above the top encoder level never shifts
    assert [shifting(up.conv_block) for up in net.upsamples] == [True, True, False]


def test_state_dict_extends_monai_dynunet():
    ours = SSHUNet(**SMALL)
    monai = DynUNet(3, 1, 3, [(1, 3, 3)] * 4, [1, 2, 2, 2], [2, 2, 2], filters=[8, 16, 32, 64], res_block=True)
    monai_keys = {k for k in monai.state_dict() if not k.startswith("skip_layers.")}
    assert monai_keys <= set(ours.state_dict())
    extra = set(ours.state_dict()) - monai_keys
    assert {"output_block.conv1.conv.weight", "upsamples.0.transp_conv.conv.bias"} <= extra


@pytest.mark.parametrize("shape", [(16, 16, 16), (16, 32, 24), (8, 16, 32)])
def test_shapes_cubic_and_non_cubic(shape):
    net = SSHUNet(**SMALL).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, *shape)).shape == (2, 3, *shape)


def test_per_view_path_equals_stacked_path():
    net = SSHUNet(**SMALL).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        per_view = net.output_block.fuse_views([net._trunk(to_view(x, k))[-1] for k in range(3)])
        torch.testing.assert_close(net(x), per_view, atol=1e-5, rtol=1e-4)


def test_paper_placement_option_changes_the_function():
    a, b = SSHUNet(**SMALL).eval(), SSHUNet(**SMALL, shift_position="before_conv").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


def test_deep_supervision_and_gradients():
    net = SSHUNet(**SMALL, deep_supervision=True, deep_supr_num=2).train()
    y = net(torch.randn(1, 1, 16, 16, 24))
    assert y.shape == (1, 3, 3, 16, 16, 24)
    y.mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    assert net(torch.randn(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_script_and_trace():
    net = SSHUNet(**SMALL).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        ref = net(x)
        torch.testing.assert_close(torch.jit.script(net)(x), ref)
        torch.testing.assert_close(torch.jit.trace(net, x)(x), ref)


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = SSHUNet(**SMALL).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    path = tmp_path / "sshunet.onnx"
    torch.onnx.export(net, x, str(path), dynamo=False, opset_version=17, input_names=["image"], output_names=["pred"])
    out = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), net(x).detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(1, 2, 16, 16, 16), "built for 1 input channel"),
        (torch.randn(1, 16, 16, 16), "5D input"),
        (torch.randn(1, 1, 16, 16, 12), "not divisible by \\[8, 8, 8\\]"),
    ],
)
def test_bad_inputs(x, match):
    with pytest.raises(ValueError, match=match):
        SSHUNet(**SMALL)(x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shift_levels": [5]}, "shift_levels must lie in"),
        ({"shift_position": "middle"}, "shift_position must be one of"),
        ({"filters": [8, 16]}, "filters needs one entry per level"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SSHUNet(**{**SMALL, **kwargs})
