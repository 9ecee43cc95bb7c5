import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from monai_ext.inferers import SharedBuffersInferer
from monai_ext.networks.blocks import folded
from monai_ext.networks.nets import SSHUNet


class _Recorder(nn.Module):
    """A network with shared_buffers that records, per call, whether it runs inside that context."""

    def __init__(self):
        super().__init__()
        self.inside, self.calls = False, []

    def shared_buffers(self):
        recorder = self

        class _Context:
            def __enter__(self):
                recorder.inside = True

            def __exit__(self, *exc):
                recorder.inside = False

        return _Context()

    def forward(self, x):
        self.calls.append(self.inside)
        return x * 2


def test_windows_run_inside_the_networks_context_and_it_closes_after():
    net = _Recorder()
    x = torch.randn(1, 1, 20, 20, 20)
    out = SharedBuffersInferer(SlidingWindowInferer((8, 8, 8), overlap=0.25))(x, net)
    assert len(net.calls) > 1 and all(net.calls) and not net.inside
    torch.testing.assert_close(out, x * 2)


def test_a_network_without_the_context_runs_as_with_the_inner_inferer():
    net = nn.Conv3d(1, 2, 3, padding=1)
    x = torch.randn(1, 1, 20, 20, 20)
    inner = SlidingWindowInferer((8, 8, 8), overlap=0.25)
    with torch.no_grad():
        assert torch.equal(SharedBuffersInferer(inner)(x, net), inner(x, net))


def test_sshunet_windows_give_the_same_volume_with_shared_buffers(monkeypatch):
    monkeypatch.setattr(folded, "POOL_MIN_BYTES", 1)  # pool every buffer of these small windows
    net = SSHUNet(out_channels=3, filters=[8, 16, 32], strides=[1, 2, 2]).eval()
    x = torch.randn(1, 1, 40, 24, 20)
    inner = SlidingWindowInferer((16, 16, 16), overlap=0.5, mode="gaussian")
    with torch.no_grad():
        assert torch.equal(SharedBuffersInferer(inner)(x, net), inner(x, net))
    assert net._shared_pools == {}
