import pytest
import torch
from monai.inferers import SimpleInferer

from monai_ext.inferers import AutocastInferer, autocast


def _net_and_dtypes():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1))
    seen = []
    net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return net.eval(), seen


def test_runs_the_network_in_bf16_on_the_cpu_and_returns_float32():
    net, seen = _net_and_dtypes()
    x = torch.rand(1, 1, 8, 8, 8)
    with torch.inference_mode():
        ref = SimpleInferer()(x, net)
        out = AutocastInferer(SimpleInferer())(x, net)
    assert seen == [torch.float32, torch.bfloat16]
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert not torch.equal(out, ref)
    torch.testing.assert_close(out, ref, atol=0.05, rtol=0.02)  # bf16: 8 significant bits through two convs


def test_disabled_is_the_wrapped_inferer():
    net, seen = _net_and_dtypes()
    x = torch.rand(1, 1, 8, 8, 8)
    with torch.inference_mode():
        out = AutocastInferer(SimpleInferer(), enabled=False)(x, net)
    assert seen == [torch.float32]
    torch.testing.assert_close(out, net(x), rtol=0, atol=0)


def test_nested_outputs_become_float32_and_the_rest_stays():
    def net(x):
        return {"a": x, "b": [x.to(torch.bfloat16), x.long()], "c": x.double()}

    out = AutocastInferer(SimpleInferer())(torch.rand(1, 1, 2, 2, 2), net)
    assert out["a"].dtype == out["b"][0].dtype == torch.float32
    assert out["b"][1].dtype == torch.int64 and out["c"].dtype == torch.float64


def test_autocast_dtype_per_device_and_unknown_device():
    with autocast("cpu"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), enabled=False):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="autocast runs on"):
        autocast("meta")
