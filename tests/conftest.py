"""Shared test fixtures: the golden parity vectors and the bundle metadata schema in ../shared.

A plain clone has no ../shared: the tests that need it skip. ``make test`` sets ``MONAI_EXT_REQUIRE_SHARED=1`` when
../shared/golden exists, and then a missing file fails the test instead, so a moved or renamed vector cannot turn
the parity tests into silent skips.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REQUIRE_SHARED = "MONAI_EXT_REQUIRE_SHARED"

# In-process tests use small tensors: one thread avoids OpenMP threads spinning against each other when the
# machine's other core is busy (it made small ops hundreds of times slower here). Bundle runs are subprocesses
# and keep torch's default.
torch.set_num_threads(1)


@pytest.fixture
def shared_dir() -> Path:
    """The folder beside the clone that holds ``golden/`` and ``schemas/`` (tests/test_conftest.py overrides it)."""
    return SHARED


def shared_file(shared_dir: Path, relative: str, what: str) -> Path:
    """``shared_dir / relative`` if it is a file; otherwise skip the test (fail it under MONAI_EXT_REQUIRE_SHARED=1).

    Args:
        shared_dir: the shared folder (the ``shared_dir`` fixture).
        relative: the file's path inside it, e.g. ``"golden/tsm_shift.pt"``.
        what: what the file is, for the message.

    Raises:
        pytest.skip.Exception: the file is missing and the variable is not ``1`` (a plain clone).
        pytest.fail.Exception: the file is missing and the variable is ``1``.
    """
    path = shared_dir / relative
    if path.is_file():
        return path
    if os.environ.get(REQUIRE_SHARED) == "1":
        pytest.fail(
            f"{what} {path} not found, and {REQUIRE_SHARED}=1 (set by `make test` when ../shared/golden exists) "
            f"makes that an error: restore the file in {shared_dir}, or unset {REQUIRE_SHARED} to skip instead",
            pytrace=False,
        )
    pytest.skip(f"{what} {path} not found (plain clone without ../shared)")


@pytest.fixture
def golden(shared_dir):
    """Load ``golden/<name>.pt`` from the shared folder; skip (or fail, see :func:`shared_file`) when it is missing."""

    def load(name: str) -> dict:
        return torch.load(shared_file(shared_dir, f"golden/{name}.pt", "parity vector"), weights_only=True)

    return load


@pytest.fixture
def meta_schema(shared_dir) -> Path:
    """The bundle metadata schema in the shared folder; skip (or fail, see :func:`shared_file`) when it is missing."""
    return shared_file(shared_dir, "schemas/meta_schema_20240725.json", "bundle metadata schema")


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run the body with ``count`` torch threads, then restore the number before it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (timings and batch-size round-off alike in every run), then restore."""
    with _torch_threads(1):
        yield


@pytest.fixture(params=[1, 2, 3])
def threads(request) -> Iterator[int]:
    """Run the test with 1, 2 and 3 torch threads (e.g. code that splits its work per thread), then restore."""
    with _torch_threads(request.param):
        yield request.param
