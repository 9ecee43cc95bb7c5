import pytest
import torch

from monai_ext.networks.blocks import MultiViewFuse, MultiViewStack, from_view, to_view


def test_views_round_trip():
    x = torch.randn(2, 3, 4, 5, 6)
    assert to_view(x, 1).shape == (2, 3, 5, 4, 6) and to_view(x, 2).shape == (2, 3, 6, 5, 4)
    for k in range(3):
        assert torch.equal(from_view(to_view(x, k), k), x)


def test_stack_puts_views_in_the_batch():
    x = torch.randn(2, 3, 4, 4, 4)
    stacked = MultiViewStack()(x)
    assert stacked.shape == (6, 3, 4, 4, 4)
    assert torch.equal(stacked[2:4], to_view(x, 1)) and torch.equal(stacked[4:], to_view(x, 2))


def test_stack_refuses_non_cubic_with_advice():
    with pytest.raises(ValueError, match="cubic.*to_view"):
        MultiViewStack()(torch.randn(1, 1, 4, 4, 6))


def test_fuse_sums_views_back_in_place_then_applies_the_head():
    fuse = MultiViewFuse(3, 4, 2).eval()
    x = torch.randn(1, 4, 5, 5, 5)
    # three copies of the same volume, each in its own view layout, fuse to 3 * x before the head
    stacked = MultiViewStack()(x)
    expected = fuse.conv(fuse.act(fuse.norm(fuse.conv1(3 * x))))
    torch.testing.assert_close(fuse(stacked), expected)


def test_fuse_views_takes_non_cubic_views():
    fuse = MultiViewFuse(3, 4, 2)
    x = torch.randn(2, 4, 3, 5, 7)
    out = fuse.fuse_views([to_view(x, k) for k in range(3)])
    assert out.shape == (2, 2, 3, 5, 7)
    out.sum().backward()
    assert fuse.conv1.conv.weight.grad is not None


def test_fuse_script():
    fuse = MultiViewFuse(3, 4, 2).eval()
    x = torch.randn(3, 4, 4, 4, 4)
    torch.testing.assert_close(torch.jit.script(fuse)(x), fuse(x))


def test_fuse_bad_arguments():
    with pytest.raises(ValueError, match="spatial_dims must be 3"):
        MultiViewFuse(2, 4, 2)
    with pytest.raises(ValueError, match="stacked in the batch"):
        MultiViewFuse(3, 4, 2)(torch.randn(2, 4, 4, 4, 4))
