"""The shared-folder fixtures of tests/conftest.py: present files load; missing ones skip in a plain clone and fail
under ``MONAI_EXT_REQUIRE_SHARED=1`` (what ``make test`` sets when ../shared/golden exists)."""

from __future__ import annotations

import re

import pytest
import torch

# a skip escaping a test would skip it rather than fail it: catch both outcomes and check which one it was
OUTCOMES = (pytest.skip.Exception, pytest.fail.Exception)


@pytest.fixture
def shared_dir(tmp_path):
    """An empty shared folder, in place of the real ../shared (overrides the conftest fixture in this module)."""
    return tmp_path / "shared"


def assert_outcome(info: pytest.ExceptionInfo, outcome: type, pattern: str) -> None:
    assert info.type is outcome, f"{info.type.__name__}: {info.value}"
    assert re.search(pattern, str(info.value)), str(info.value)


@pytest.mark.parametrize(
    "require, outcome, reason",
    [(None, pytest.skip.Exception, r"not found \(plain clone"), ("1", pytest.fail.Exception, r"not found, and MONAI")],
)
def test_missing_files_skip_in_a_plain_clone_and_fail_when_required(
    require, outcome, reason, golden, request, monkeypatch
):
    if require is None:
        monkeypatch.delenv("MONAI_EXT_REQUIRE_SHARED", raising=False)
    else:
        monkeypatch.setenv("MONAI_EXT_REQUIRE_SHARED", require)
    with pytest.raises(OUTCOMES) as info:
        golden("vector")
    assert_outcome(info, outcome, r"golden/vector\.pt " + reason)
    with pytest.raises(OUTCOMES) as info:
        request.getfixturevalue("meta_schema")  # after the environment is set: the fixture checks at set-up
    assert_outcome(info, outcome, r"meta_schema_20240725\.json " + reason)


def test_present_files_are_served_when_shared_is_required(shared_dir, golden, request, monkeypatch):
    monkeypatch.setenv("MONAI_EXT_REQUIRE_SHARED", "1")
    (shared_dir / "golden").mkdir(parents=True)
    (shared_dir / "schemas").mkdir()
    torch.save({"x": torch.arange(3)}, shared_dir / "golden" / "vector.pt")
    schema = shared_dir / "schemas" / "meta_schema_20240725.json"
    schema.write_text("{}")
    torch.testing.assert_close(golden("vector")["x"], torch.arange(3))
    assert request.getfixturevalue("meta_schema") == schema
