"""Shared test fixtures: the golden parity vectors in ../shared/golden (skipped in a plain clone)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


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
