import pytest
import torch
from monai.networks.nets import DynUNet
from torch import nn

from monai_ext.networks.dropin import attach_block


class _Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.weight = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        self.calls += 1
        return x * self.weight


def _dynunet():
    torch.manual_seed(0)
    return DynUNet(3, 1, 2, [3] * 4, [1, 2, 2, 2], [2] * 3, filters=[4, 8, 16, 32], res_block=True).eval()


@pytest.mark.parametrize("target", ["bottleneck", "downsamples.1", "input_block"])
def test_block_runs_inside_dynunet_and_changes_the_output(target):
    net, x = _dynunet(), torch.randn(1, 1, 32, 24, 16)
    before = net(x)
    block = _Scale()
    attach_block(net, target, block)
    after = net(x)
    assert block.calls == 1 and after.shape == before.shape and not torch.allclose(after, before)
    after.sum().backward()
    assert block.weight.grad is not None


def test_weights_kept_under_new_keys():
    net = _dynunet()
    old = net.bottleneck.conv1.conv.weight
    attach_block(net, net.bottleneck, nn.Identity())
    assert net.state_dict()["bottleneck.0.conv1.conv.weight"] is not None
    assert net.bottleneck[0].conv1.conv.weight is old


def test_identity_before_keeps_the_output():
    net, x = _dynunet(), torch.randn(1, 1, 16, 16, 16)
    before = net(x)
    attach_block(net, "downsamples.0", nn.Identity(), where="before")
    assert torch.equal(net(x), before)


def test_bad_arguments():
    net = _dynunet()
    with pytest.raises(ValueError, match="where"):
        attach_block(net, "bottleneck", nn.Identity(), where="inside")
    with pytest.raises(ValueError, match="not a submodule"):
        attach_block(net, nn.Linear(1, 1), nn.Identity())
