"""2.5D inference: neighbour slices as channels, MONAI's SliceInferer underneath."""

import pytest
import torch

from monai_ext.inferers import NeighbourSliceInferer, neighbour_channels


@pytest.mark.parametrize("spatial_dim", [0, 1, 2])
def test_neighbour_channels_stack_the_adjacent_slices_and_repeat_the_ends(spatial_dim):
    x = torch.arange(4.0).view(1, 1, *[4 if a == spatial_dim else 1 for a in range(3)])  # slice values 0 1 2 3
    out = neighbour_channels(x, spatial_dim, neighbours=1)
    assert out.shape[1] == 3
    assert out.movedim(2 + spatial_dim, 0).flatten(1).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert neighbour_channels(x, spatial_dim, neighbours=0) is x
    assert neighbour_channels(x, spatial_dim, neighbours=2).shape[1] == 5


def test_neighbour_slice_inferer_feeds_each_slice_with_its_neighbours():
    seen = []

    def net(s: torch.Tensor) -> torch.Tensor:  # (n, 3, H, W): the centre channel out
        seen.append(s.shape)
        return s[:, 1:2]

    x = torch.randn(1, 1, 4, 5, 6)
    with torch.inference_mode():
        out = NeighbourSliceInferer(spatial_dim=2, neighbours=1, roi_size=(-1, -1), sw_batch_size=6)(x, net)
    torch.testing.assert_close(out, x)
    assert seen == [(6, 3, 4, 5)]


def test_bad_arguments():
    with pytest.raises(ValueError, match="neighbours"):
        NeighbourSliceInferer(neighbours=-1, roi_size=(-1, -1))
    with pytest.raises(ValueError, match="spatial_dim"):
        NeighbourSliceInferer(spatial_dim=3, roi_size=(-1, -1))
