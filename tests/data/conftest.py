"""Shared helpers of the data tests."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """26-connected components of a boolean volume (max-pool label propagation; scipy is not a dependency)."""
    m = torch.from_numpy(mask)[None, None].float()
    ids = torch.arange(1, mask.size + 1, dtype=torch.float32).reshape(m.shape) * m
    while True:
        new = torch.nn.functional.max_pool3d(ids, 3, 1, 1) * m
        if torch.equal(new, ids):
            break
        ids = new
    ids_np = ids[0, 0].numpy()
    return [ids_np == v for v in np.unique(ids_np[ids_np > 0])]


def _sha256(*arrays: np.ndarray) -> str:
    """SHA-256 over each array's dtype, shape and bytes (C order), in turn."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(str(a.dtype).encode())
        digest.update(str(a.shape).encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


@pytest.fixture
def components():
    """``components(mask)``: the 26-connected components of a boolean volume, one boolean mask each."""
    return _components


@pytest.fixture
def sha256():
    """``sha256(*arrays)``: a checksum of the arrays' dtypes, shapes and bytes (the phantom regression references)."""
    return _sha256
