import pytest
import torch
from monai.networks.blocks.dynunet_block import UnetResBlock
from monai.networks.nets import DynUNet
from torch import nn

from monai_ext.networks.blocks import SliceShift, SliceShiftResBlock, SliceShiftUpBlock, add_slice_shift
from monai_ext.networks.blocks.folded import to_folded, unfold

NORM = ("INSTANCE", {"affine": True})
KERNEL = (3, 3, 1)  # 2D convs, slices on the last axis


@pytest.mark.parametrize("position", ["after_conv", "before_conv"])
@pytest.mark.parametrize("in_c, out_c, stride", [(4, 8, 2), (8, 8, 1)])
def test_res_block_shapes_and_gradients(position, in_c, out_c, stride):
    block = SliceShiftResBlock(3, in_c, out_c, KERNEL, stride, NORM, shift=SliceShift(), shift_position=position)
    x = torch.randn(2, in_c, 8, 8, 8, requires_grad=True)
    y = block(x)
    assert y.shape == (2, out_c, 8 // stride, 8 // stride, 8 // stride)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_shift_gives_2d_convs_a_view_of_neighbour_slices():
    x = torch.zeros(1, 8, 8, 8, 6)
    x[..., 3] = torch.randn(1, 8, 8, 8)  # only slice 3 (last axis) is non-zero
    plain = SliceShiftResBlock(3, 8, 8, KERNEL, 1, "batch").eval()
    shifted = SliceShiftResBlock(3, 8, 8, KERNEL, 1, "batch", shift=SliceShift()).eval()
    shifted.load_state_dict(plain.state_dict())
    touched = lambda y: (y - y[..., :1]).abs().sum(dim=(0, 1, 2, 3)) > 1e-6  # noqa: E731
    assert touched(plain(x)).tolist() == [False, False, False, True, False, False]
    assert touched(shifted(x))[[2, 4]].all()


def test_layers_are_monai_res_block_layers_with_its_names():
    ours = SliceShiftResBlock(3, 4, 8, KERNEL, 2, NORM)
    assert set(ours.state_dict()) == set(UnetResBlock(3, 4, 8, KERNEL, 2, NORM).state_dict())
    assert ours.conv1.conv.kernel_size == KERNEL and ours.conv3 is not None
    assert SliceShiftResBlock(3, 8, 8, KERNEL, 1, NORM).conv3 is None


def test_without_shift_and_monai_order_equals_monai_res_block():
    monai_block = UnetResBlock(3, 4, 8, KERNEL, 2, NORM).eval()
    ours = SliceShiftResBlock(3, 4, 8, KERNEL, 2, NORM, residual_before_norm=False).eval()
    ours.load_state_dict(monai_block.state_dict())
    x = torch.randn(1, 4, 8, 8, 8)
    torch.testing.assert_close(ours(x), monai_block(x))


def test_from_res_block_shares_the_layers():
    monai_block = UnetResBlock(3, 4, 8, KERNEL, 2, NORM).eval()
    x = torch.randn(1, 4, 8, 8, 8)
    expected = monai_block(x)
    ours = SliceShiftResBlock.from_res_block(monai_block, shift=None).eval()
    assert ours.conv1 is monai_block.conv1 and ours.norm3 is monai_block.norm3
    torch.testing.assert_close(ours(x), expected)  # no shift: MONAI's block, computed the same way
    assert not torch.allclose(SliceShiftResBlock.from_res_block(monai_block, SliceShift())(x), expected)


def test_layers_must_match_the_arguments():
    with pytest.raises(ValueError, match="from_res_block"):
        SliceShiftResBlock(3, 4, 16, KERNEL, 2, NORM, layers=UnetResBlock(3, 4, 8, KERNEL, 2, NORM))


def test_up_block_shapes():
    up = SliceShiftUpBlock(3, 16, 8, KERNEL, 2, NORM, trans_bias=True, shift=SliceShift())
    y = up(torch.randn(1, 16, 4, 4, 4), torch.randn(1, 8, 8, 8, 8))
    assert y.shape == (1, 8, 8, 8, 8)
    assert up.transp_conv.conv.bias is not None


def test_bad_shift_position():
    with pytest.raises(ValueError, match="shift_position must be one of"):
        SliceShiftResBlock(3, 4, 4, 3, 1, NORM, shift_position="inside")


def _stock_dynunet(res_block=True):
    return DynUNet(3, 1, 2, kernel_size=[KERNEL] * 4, strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2],
                   filters=[8, 16, 32, 64], res_block=res_block).eval()  # fmt: skip


def test_add_slice_shift_to_a_stock_dynunet():
    net = _stock_dynunet()
    keys = set(net.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    before = net(x)
    add_slice_shift(net)
    assert set(net.state_dict()) == keys  # same weights, same keys: checkpoints keep loading
    assert not any(isinstance(m, UnetResBlock) for m in net.modules())
    # DynUNet's skip_layers alias its blocks: they now alias the same shifting blocks
    assert net.skip_layers.downsample is net.input_block and net.skip_layers.next_layer.downsample is net.downsamples[0]
    assert sum(isinstance(m, SliceShiftResBlock) for m in net.modules()) == 4
    after = net(x)
    assert after.shape == before.shape and not torch.allclose(after, before)
    torch.testing.assert_close(torch.jit.script(net)(x), after)


def test_add_slice_shift_forward_and_backward_in_training():
    net = add_slice_shift(_stock_dynunet(), spatial_dim=2, shift_position="before_conv").train()
    x = torch.randn(2, 1, 16, 16, 8)
    y = net(x)
    assert y.shape == (2, 2, 16, 16, 8)
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert all(b.shift.spatial_dim == 2 for b in net.modules() if isinstance(b, SliceShiftResBlock))


def test_add_slice_shift_on_a_single_block():
    block = UnetResBlock(3, 8, 8, KERNEL, 1, NORM)
    shifted = add_slice_shift(block, spatial_dim=1)
    assert isinstance(shifted, SliceShiftResBlock) and shifted.conv1 is block.conv1
    assert shifted.shift.spatial_dim == 1


def test_add_slice_shift_needs_res_blocks():
    with pytest.raises(ValueError, match="res_block=True"):
        add_slice_shift(_stock_dynunet(res_block=False))


@pytest.mark.parametrize("residual_before_norm", [True, False])
@pytest.mark.parametrize("pooled", [True, False])
def test_folded_block_of_a_one_channel_input_in_inference(residual_before_norm, pooled):
    """The residual projection of a one-channel input runs as an affine map per channel (no convolution, no norm
    over its output); the block still computes what its 3D modules compute."""
    block = SliceShiftResBlock(3, 1, 8, KERNEL, 1, NORM, shift=SliceShift(), residual_before_norm=residual_before_norm)
    for p in block.parameters():
        nn.init.normal_(p)
    block.eval()
    x = torch.randn(2, 1, 8, 6, 5) * 3 + 10
    with torch.no_grad():
        expected = block(x)
        got = block.forward_folded(to_folded(x), 2, [] if pooled else None)
    torch.testing.assert_close(unfold(got, 2), expected, atol=1e-5, rtol=1e-5)
