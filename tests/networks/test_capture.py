import copy

import pytest
import torch
from torch._dynamo.utils import counters

from monai_ext.networks import capture, capturing, compile_network, create_network, get_network_entry
from monai_ext.networks.capture import compiled_methods

pytestmark = pytest.mark.usefixtures("one_thread")

SSH = {"out_channels": 3, "filters": [8, 16, 32, 64], "strides": [1, 2, 2, 2]}
THICK = {"out_channels": 3, "layers": (1, 1, 1, 1), "block_inplanes": (8, 16, 32, 64), "decoder_channels": 16}
THICK["low_level_channels"] = 8
SCAA = {"out_channels": 3, "filters": (4, 8, 8, 16, 16), "context_channels": (4, 4, 8, 8), "global_channels": 4}


class _Probe(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1 if capturing() else x


def test_capturing_is_true_only_while_a_graph_is_recorded():
    x = torch.zeros(2)
    probe = _Probe()
    assert not capturing()
    assert torch.equal(probe(x), x)
    assert torch.equal(torch.jit.trace(probe, x, check_trace=False)(x), x + 1)  # the trace recorded the capture path
    assert torch.equal(torch.compile(probe, backend="eager", fullgraph=True)(x), x + 1)
    assert torch.equal(torch.jit.script(probe)(x), x)  # TorchScript compiles the eager code


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [("thick2d", THICK, (1, 1, 64, 64, 18)), ("scaa_star", SCAA, (1, 1, 64, 64, 32))],
)
def test_a_compiled_network_gives_the_eager_output(name, kwargs, shape):
    torch.manual_seed(0)
    entry = get_network_entry(name)
    net = entry.build(in_channels=1, **kwargs).eval()
    inferer = entry.make_inferer()
    x = torch.randn(shape)
    keys = list(net.state_dict())
    with torch.no_grad():
        expected = inferer(x, net)
        compiled = compile_network(net, freeze=True)
        assert compiled is net and list(net.state_dict()) == keys
        counters.clear()
        out = inferer(x, net)
    assert counters["stats"]["unique_graphs"] >= 2  # the inferer's two steps ran compiled, not eager
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=1e-4)
    assert not torch.equal(out, torch.zeros_like(out))


def test_ssh_unet_compiles_as_one_graph():
    """Under capture SSH-UNet leaves its buffer pools and in-place slice chunks (eager scheduling) to the compiler:
    a graph break there would fail ``fullgraph``."""
    torch.manual_seed(0)
    net = create_network("ssh_unet", **SSH).eval()
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad(), net.shared_buffers():
        expected = net(x)
        out = torch.compile(net, fullgraph=True, dynamic=False)(x)
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=1e-4)


def test_a_deep_copy_of_a_compiled_network_runs_its_own_weights():
    net = compile_network(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)).eval(), freeze=True)
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        first = net(x)
        twin = copy.deepcopy(net)
        twin[0].bias.add_(1.0)
        torch.testing.assert_close(twin(x), first + 1.0)
        torch.testing.assert_close(net(x), first)


def test_compile_network_compiles_each_method_once():
    net = create_network("scaa_star", **SCAA)
    assert compiled_methods(net) == ("forward", "encode_context", "forward_slices")
    assert compiled_methods(torch.nn.Conv2d(1, 1, 1)) == ("forward",)
    compile_network(net)
    first = net.forward
    assert compile_network(net).forward is first


def test_compile_network_errors(monkeypatch):
    with pytest.raises(AttributeError, match="no method.*encode"):
        compile_network(torch.nn.Conv2d(1, 1, 1), methods=["encode"])
    monkeypatch.setattr(capture.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler.*uncompiled"):
        compile_network(torch.nn.Conv2d(1, 1, 1))
