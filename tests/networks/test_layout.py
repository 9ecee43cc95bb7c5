import pytest
import torch

from monai_ext.networks.layout import (
    check_spatial_axes,
    check_spatial_dim,
    slices_last,
    slices_restored,
    take_slices,
    tensor_dim,
)


@pytest.mark.parametrize("spatial_dim", [0, 1, 2])
def test_check_spatial_dim_accepts_spatial_axes(spatial_dim):
    assert check_spatial_dim(spatial_dim) == spatial_dim


@pytest.mark.parametrize("bad", [-1, 3, 4, 2.0, True, None])
def test_check_spatial_dim_refuses_tensor_dims_and_non_ints(bad):
    with pytest.raises(ValueError, match="SliceInferer"):
        check_spatial_dim(bad)


def test_check_spatial_dim_in_2d():
    assert check_spatial_dim(1, num_spatial=2) == 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_spatial_dim(2, num_spatial=2)


def test_check_spatial_axes():
    assert check_spatial_axes([2, 0, 1]) == (2, 0, 1)
    for bad in ([], [0, 0], [0, 3]):
        with pytest.raises(ValueError):
            check_spatial_axes(bad)


def test_tensor_dim_batched_and_unbatched():
    assert [tensor_dim(a) for a in range(3)] == [2, 3, 4]
    assert [tensor_dim(a, batched=False) for a in range(3)] == [1, 2, 3]


@pytest.mark.parametrize("spatial_dim", [0, 1, 2])
def test_slices_last_round_trip(spatial_dim):
    x = torch.randn(2, 3, 5, 6, 7)
    moved = slices_last(x, spatial_dim)
    assert moved.shape[-1] == x.shape[2 + spatial_dim]
    assert torch.equal(moved[..., 1], x.select(2 + spatial_dim, 1))
    assert torch.equal(slices_restored(moved, spatial_dim), x)


@pytest.mark.parametrize("spatial_dim", [0, 1, 2])
def test_take_slices_picks_each_volumes_own_slices(spatial_dim):
    x = torch.randn(2, 3, 5, 6, 7)
    indices = torch.tensor([[4, 0], [1, 1]])
    picked = take_slices(x, indices, spatial_dim)
    expected_shape = list(x.shape)
    expected_shape[2 + spatial_dim] = 2
    assert list(picked.shape) == expected_shape
    for b in range(2):
        for j in range(2):
            assert torch.equal(picked[b].select(1 + spatial_dim, j), x[b].select(1 + spatial_dim, int(indices[b, j])))


def test_take_slices_refuses_bad_axes_and_indices():
    x = torch.randn(2, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="SliceInferer"):
        take_slices(x, torch.zeros(2, 1, dtype=torch.long), 4)
    with pytest.raises(ValueError, match=r"\(B, S\) = \(2, S\)"):
        take_slices(x, torch.zeros(3, dtype=torch.long), 2)
