import pytest
import torch
from torch.nn import functional as F

from monai_ext.networks.blocks.adaptive_pool import adaptive_avg_pool_by_matrices, adaptive_avg_pool_matrix


@pytest.mark.parametrize("size_in, size_out", [(8, 4), (6, 4), (2, 4), (5, 3), (3, 7), (1, 2), (4, 4)])
def test_matrix_rows_are_pytorchs_windows(size_in, size_out):
    m = adaptive_avg_pool_matrix(size_in, size_out, dtype=torch.float64)
    assert m.shape == (size_out, size_in)
    torch.testing.assert_close(m.sum(1), torch.ones(size_out, dtype=torch.float64))
    x = torch.randn(2, 3, size_in, dtype=torch.float64)
    torch.testing.assert_close(x @ m.t(), F.adaptive_avg_pool1d(x, size_out))


@pytest.mark.parametrize(
    "shape, out", [((2, 3, 24, 10), [16, 4]), ((1, 2, 5, 2, 4), [4, 4]), ((1, 2, 3, 5, 6), [2, 2, 2])]
)
def test_equals_adaptive_avg_pool(shape, out):
    x = torch.randn(*shape)
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[len(out)]
    n = len(out)
    expected = pool(x.reshape(-1, 1, *shape[-n:]), out).reshape(*shape[:-n], *out)
    torch.testing.assert_close(adaptive_avg_pool_by_matrices(x, out), expected)
