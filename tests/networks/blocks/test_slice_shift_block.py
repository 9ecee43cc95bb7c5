import pytest
import torch
from monai.networks.blocks.dynunet_block import UnetResBlock
from monai.networks.nets import DynUNet

from monai_ext.networks.blocks import SliceShift, SliceShiftResBlock, SliceShiftUpBlock, add_slice_shift

NORM = ("INSTANCE", {"affine": True})


@pytest.mark.parametrize("position", ["after_conv", "before_conv"])
@pytest.mark.parametrize("in_c, out_c, stride", [(4, 8, 2), (8, 8, 1)])
def test_res_block_shapes_and_gradients(position, in_c, out_c, stride):
    block = SliceShiftResBlock(3, in_c, out_c, (1, 3, 3), stride, NORM, shift=SliceShift(), shift_position=position)
    x = torch.randn(2, in_c, 8, 8, 8, requires_grad=True)
    y = block(x)
    assert y.shape == (2, out_c, 8 // stride, 8 // stride, 8 // stride)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_shift_gives_2d_convs_a_view_of_neighbour_slices():
    x = torch.zeros(1, 8, 6, 8, 8)
    x[:, :, 3] = torch.randn(1, 8, 8, 8)  # only slice 3 is non-zero
    plain = SliceShiftResBlock(3, 8, 8, (1, 3, 3), 1, "batch").eval()
    shifted = SliceShiftResBlock(3, 8, 8, (1, 3, 3), 1, "batch", shift=SliceShift()).eval()
    shifted.load_state_dict(plain.state_dict())
    touched = lambda y: (y - y[:, :, :1]).abs().sum(dim=(0, 1, 3, 4)) > 1e-6  # noqa: E731
    assert touched(plain(x)).tolist() == [False, False, False, True, False, False]
    assert touched(shifted(x))[[2, 4]].all()


def test_without_shift_and_monai_order_equals_monai_res_block():
    monai_block = UnetResBlock(3, 4, 8, (1, 3, 3), 2, NORM).eval()
    ours = SliceShiftResBlock(3, 4, 8, (1, 3, 3), 2, NORM, residual_before_norm=False).eval()
    ours.load_state_dict(monai_block.state_dict())
    x = torch.randn(1, 4, 8, 8, 8)
    torch.testing.assert_close(ours(x), monai_block(x))


def test_up_block_shapes():
    up = SliceShiftUpBlock(3, 16, 8, (1, 3, 3), 2, NORM, trans_bias=True, shift=SliceShift())
    y = up(torch.randn(1, 16, 4, 4, 4), torch.randn(1, 8, 8, 8, 8))
    assert y.shape == (1, 8, 8, 8, 8)
    assert up.transp_conv.conv.bias is not None


def test_bad_shift_position():
    with pytest.raises(ValueError, match="shift_position must be one of"):
        SliceShiftResBlock(3, 4, 4, 3, 1, NORM, shift_position="inside")


def _user_dynunet(res_block=True):
    return DynUNet(3, 1, 2, kernel_size=[(1, 3, 3)] * 4, strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2],
                   filters=[8, 16, 32, 64], res_block=res_block).eval()  # fmt: skip


def test_add_slice_shift_to_a_users_dynunet():
    net = _user_dynunet()
    keys = set(net.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    before = net(x)
    add_slice_shift(net)
    assert set(net.state_dict()) == keys  # same weights, same keys: checkpoints keep loading
    assert sum(isinstance(m, SliceShiftResBlock) for m in net.modules()) >= 4
    assert not any(isinstance(m, UnetResBlock) for m in net.modules())
    after = net(x)
    assert after.shape == before.shape and not torch.allclose(after, before)
    torch.testing.assert_close(torch.jit.script(net)(x), after)


def test_add_slice_shift_needs_res_blocks():
    with pytest.raises(ValueError, match="res_block=True"):
        add_slice_shift(_user_dynunet(res_block=False))
