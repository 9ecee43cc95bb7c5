import pytest
import torch

from monai_ext.networks.blocks import MULTI_VIEW_ORDER, MultiViewFuse, MultiViewStack, from_view, to_view
from monai_ext.networks.blocks.multi_view import view_axes, views_stackable


def test_each_view_holds_its_slices_last():
    x = torch.randn(2, 3, 4, 5, 6)  # (B, C, H, W, D)
    assert torch.equal(to_view(x, 2), x)  # axial: the volume as it is
    assert torch.equal(to_view(x, 0), x.permute(0, 1, 4, 3, 2))  # (D, W, H): slices along H last
    assert torch.equal(to_view(x, 1), x.permute(0, 1, 4, 2, 3))  # (D, H, W): slices along W last
    for s in range(3):
        assert torch.equal(from_view(to_view(x, s), s), x)


def test_view_axes_name_the_axes_each_view_holds():
    x = torch.randn(1, 2, 4, 5, 6)
    assert [view_axes(s) for s in range(3)] == [(2, 1, 0), (2, 0, 1), (0, 1, 2)]
    for s in range(3):
        assert view_axes(s)[-1] == s
        assert torch.equal(to_view(x, s), x.permute(0, 1, *(a + 2 for a in view_axes(s))))


def test_views_are_the_release_views_with_slices_moved_last():
    # the release views x, x.transpose(2, 3), x.transpose(2, 4) with the slices first; ours swap first and last
    x = torch.randn(1, 2, 4, 5, 6)
    for s in range(3):
        torch.testing.assert_close(to_view(x, s), x.transpose(2, 2 + s).transpose(2, 4), atol=0, rtol=0)


def test_views_stackable():
    assert views_stackable(torch.randn(1, 1, 4, 4, 4), [0, 1, 2])
    assert not views_stackable(torch.randn(1, 1, 4, 4, 6), [0, 1, 2])
    assert views_stackable(torch.randn(1, 1, 4, 5, 6), [2])  # one view always stacks
    h_equals_d = torch.randn(1, 1, 4, 5, 4)
    assert views_stackable(h_equals_d, [2, 0]) and not views_stackable(h_equals_d, [2, 1])


def test_stack_puts_views_in_the_batch_in_order():
    x = torch.randn(2, 3, 4, 4, 4)
    stacked = MultiViewStack()(x)
    assert MULTI_VIEW_ORDER == (0, 1, 2) and stacked.shape == (6, 3, 4, 4, 4)
    assert torch.equal(stacked[:2], to_view(x, 0)) and torch.equal(stacked[4:], to_view(x, 2))
    two = MultiViewStack(spatial_dims_order=(2, 1))(x)
    assert torch.equal(two[:2], x) and torch.equal(two[2:], to_view(x, 1))


def test_stack_refuses_views_of_different_shapes_with_advice():
    with pytest.raises(ValueError, match="views of one shape.*to_view"):
        MultiViewStack()(torch.randn(1, 1, 4, 4, 6))


def test_fuse_sums_views_back_in_place_then_applies_the_head():
    fuse = MultiViewFuse(3, 4, 2).eval()
    x = torch.randn(1, 4, 5, 5, 5)
    # three copies of the same volume, each in its own view layout, fuse to 3 * x before the head
    stacked = MultiViewStack()(x)
    expected = fuse.conv(fuse.act(fuse.norm(fuse.conv1(3 * x))))
    torch.testing.assert_close(fuse(stacked), expected)


def test_fuse_views_takes_views_of_different_shapes():
    fuse = MultiViewFuse(3, 4, 2)
    x = torch.randn(2, 4, 3, 5, 7)
    out = fuse.fuse_views([to_view(x, s) for s in MULTI_VIEW_ORDER])
    assert out.shape == (2, 2, 3, 5, 7)
    out.sum().backward()
    assert fuse.conv1.conv.weight.grad is not None


def test_fuse_one_view():
    fuse = MultiViewFuse(3, 4, 2, spatial_dims_order=(2,)).eval()
    x = torch.randn(2, 4, 3, 5, 7)
    torch.testing.assert_close(fuse(x), fuse.conv(fuse.act(fuse.norm(fuse.conv1(x)))))


def test_fuse_script():
    fuse = MultiViewFuse(3, 4, 2).eval()
    x = torch.randn(3, 4, 4, 4, 4)
    torch.testing.assert_close(torch.jit.script(fuse)(x), fuse(x))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MultiViewFuse(2, 4, 2), "spatial_dims must be 3"),
        (lambda: MultiViewFuse(3, 4, 2)(torch.randn(2, 4, 4, 4, 4)), "3 views stacked in the batch"),
        (lambda: MultiViewFuse(3, 4, 2, spatial_dims_order=(2, 2)), "distinct spatial axes"),
        (lambda: MultiViewStack(spatial_dims_order=(4,)), "spatial_dims_order counts spatial axes"),
        (lambda: MultiViewStack()(torch.randn(1, 4, 4, 4)), "expects \\(B, C, H, W, D\\)"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
