"""Shared test fixtures: the golden parity vectors in ../shared/golden (skipped in a plain clone)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# In-process tests use small tensors: one thread avoids OpenMP threads spinning against each other when the
# machine's other core is busy (it made small ops hundreds of times slower here). Bundle runs are subprocesses
# and keep torch's default.
torch.set_num_threads(1)


@pytest.fixture
def golden():
    """Load ``../shared/golden/<name>.pt``; skip the test when the shared folder is absent."""

    def load(name: str) -> dict:
        path = SHARED / "golden" / f"{name}.pt"
        if not path.is_file():
            pytest.skip(f"parity vector {path} not found (plain clone without ../shared)")
        return torch.load(path, weights_only=True)

    return load


@pytest.fixture
def meta_schema() -> Path:
    path = SHARED / "schemas" / "meta_schema_20240725.json"
    if not path.is_file():
        pytest.skip(f"bundle metadata schema {path} not found (plain clone without ../shared)")
    return path
