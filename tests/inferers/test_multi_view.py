"""Three-view fusion: axes swapped for any inferer with a spatial_dim, majority vote with its tie-break, mean, one
net per view."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SliceInferer

from monai_ext.inferers import MultiViewInferer, SliceGroupInferer, fuse_views


def _one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, classes).movedim(-1, 1).float()


def test_vote_takes_the_majority_and_breaks_ties_by_the_mean():
    a = _one_hot(torch.tensor([[0, 1, 2, 2]]), 3) * 5  # logits; the views: a, b, c
    b = _one_hot(torch.tensor([[0, 1, 1, 0]]), 3) * 5
    c = _one_hot(torch.tensor([[1, 2, 0, 1]]), 3) * 5
    c[0, 1, 3] = 9  # the 3-way tie at position 3 goes to the class with the highest mean logit (1)
    fused = fuse_views([a, b, c], "vote")
    assert fused.argmax(1).tolist() == [[0, 1, 0, 1]]
    assert torch.equal(fused, _one_hot(fused.argmax(1), 3))  # one-hot
    # a large logit in one view never overturns two votes
    c2 = c.clone()
    c2[0, 1, 0] = 1e6
    assert fuse_views([a, b, c2], "vote").argmax(1)[0, 0] == 0
    torch.testing.assert_close(fuse_views([a, b, c], "mean"), (a + b + c) / 3)


def test_fuse_views_refuses_bad_input():
    with pytest.raises(ValueError, match="fusion must be one of"):
        fuse_views([torch.zeros(1, 2, 3)], "max")
    with pytest.raises(ValueError, match="of one shape"):
        fuse_views([torch.zeros(1, 2, 3), torch.zeros(1, 2, 4)])


def _axis_marker(x: torch.Tensor) -> torch.Tensor:
    """A slab 'network' that returns, per voxel, the input and the index of the slice within the slab."""
    return torch.cat([x, torch.arange(x.shape[-1], dtype=x.dtype).expand_as(x)], dim=1)


def test_each_view_slides_along_its_own_axis_and_outputs_come_back_in_place():
    x = torch.randn(1, 1, 4, 5, 6)
    # groups of 2: the mean position within the group differs between edge and inner slices along that axis only
    for along in (2, 0):  # the wrapped inferer's own spatial_dim
        for view in (0, 1, 2):
            inferer = MultiViewInferer(SliceGroupInferer(2, spatial_dim=along), [view], fusion="mean")
            out = inferer(x, _axis_marker)
            torch.testing.assert_close(out[:, :1], x)  # the volume comes back in its own orientation
            torch.testing.assert_close(out, SliceGroupInferer(2, spatial_dim=view)(x, _axis_marker))


class _InPlaneNet(torch.nn.Module):
    """A slab 'network' that tells the two in-plane axes apart (a running sum along the first) and records the slabs
    it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x)
        return torch.cat([x.cumsum(2), -x], dim=1)


def test_a_view_sees_the_slabs_of_the_inferer_along_that_axis_in_plane_axes_in_order():
    """The slabs of view v are those SliceGroupInferer(spatial_dim=v) (and RandSliceGroupd(spatial_dim=v) in
    training) gives: a network trained per view sees its training layout, not a transposed plane."""
    x = torch.randn(1, 1, 4, 5, 6)  # three different sizes: a transposed plane changes the shapes
    for along in (0, 1, 2):
        for view in (0, 1, 2):
            net, direct = _InPlaneNet(), _InPlaneNet()
            out = MultiViewInferer(SliceGroupInferer(3, spatial_dim=along), [view], fusion="mean")(x, net)
            expected = SliceGroupInferer(3, spatial_dim=view)(x, direct)
            assert [s.shape for s in net.seen] == [s.shape for s in direct.seen]
            assert all(torch.equal(a, b) for a, b in zip(net.seen, direct.seen))
            torch.testing.assert_close(out, expected)


def test_paper_protocol_three_networks_probabilities_vote():
    """One network per view, 15-slice groups with stride 1, averaged probabilities, majority vote: equals fusing the
    three single-view inferers by hand."""
    torch.manual_seed(0)
    nets = [torch.nn.Conv3d(1, 3, (3, 1, 1), padding=(1, 0, 0)) for _ in range(3)]  # in-plane sensitive
    x = torch.randn(1, 1, 17, 16, 18)
    single = SliceGroupInferer(15, stride=1, activation="softmax")
    with torch.no_grad():
        fused = MultiViewInferer(single, spatial_dims_order=(2, 1, 0))(x, nets)
        per_view = [
            SliceGroupInferer(15, spatial_dim=v, stride=1, activation="softmax")(x, n) for v, n in zip((2, 1, 0), nets)
        ]
    torch.testing.assert_close(fused, fuse_views(per_view, "vote"))
    assert fused.sum(1).eq(1).all()  # one-hot labels


def test_wraps_monai_slice_inferer_and_one_network_per_view():
    torch.manual_seed(0)
    nets = [torch.nn.Conv2d(1, 3, 1) for _ in range(3)]
    x = torch.randn(1, 1, 6, 7, 8)
    inferer = MultiViewInferer(SliceInferer(roi_size=(-1, -1), spatial_dim=2), spatial_dims_order=(2, 1, 0))
    with torch.no_grad():
        fused = inferer(x, nets)
        per_view = [SliceInferer(roi_size=(-1, -1), spatial_dim=v)(x, n) for v, n in zip((2, 1, 0), nets)]
    torch.testing.assert_close(fused, fuse_views(per_view, "vote"))
    with pytest.raises(ValueError, match="got 2 networks for 3 views"):
        inferer(x, nets[:2])


def test_bad_arguments():
    with pytest.raises(ValueError, match="spatial_dims_order must list distinct spatial axes"):
        MultiViewInferer(SliceGroupInferer(3), spatial_dims_order=(0, 0))
    with pytest.raises(ValueError, match="spatial_dims_order counts spatial axes"):
        MultiViewInferer(SliceGroupInferer(3), spatial_dims_order=(2, 3))
    with pytest.raises(ValueError, match="fusion must be one of"):
        MultiViewInferer(SliceGroupInferer(3), fusion="max")
    with pytest.raises(ValueError, match="must say which spatial axis it slides along"):
        MultiViewInferer(lambda x, n: n(x))
    with pytest.raises(ValueError, match=r"expects a \(B, C, H, W, D\) volume"):
        MultiViewInferer(SliceGroupInferer(3))(torch.zeros(1, 1, 4, 4), _axis_marker)
