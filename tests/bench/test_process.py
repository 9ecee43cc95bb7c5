import os

import pytest

from monai_ext.bench.process import peak_bytes, reset_peak, run_fresh


def test_run_fresh_returns_the_child_result_and_passes_the_environment():
    result = run_fresh("os:getenv", {"key": "MONAI_EXT_TEST_VAR"}, env={"MONAI_EXT_TEST_VAR": "42"})
    # os.getenv returns a string, not a dict: run_fresh hands back whatever JSON the child printed
    assert result == "42"
    assert "MONAI_EXT_TEST_VAR" not in os.environ


def test_run_fresh_reports_a_failing_child():
    with pytest.raises(RuntimeError, match=r"os:getcwd\(\{'bad': 1\}\) failed in a fresh process"):
        run_fresh("os:getcwd", {"bad": 1})


def test_peak_bytes_grows_with_a_big_allocation():
    reset_peak()
    before, source = peak_bytes()
    block = bytearray(64 * 2**20)
    block[::4096] = b"\x01" * len(block[::4096])  # touch every page
    after, _ = peak_bytes()
    assert source in ("VmHWM", "ru_maxrss")
    assert after - before >= 60 * 2**20
