import os
import subprocess
import sys
from pathlib import Path

import pytest

from monai_ext.bench.process import run_fresh


def test_run_fresh_returns_the_child_result_and_passes_the_environment():
    result = run_fresh("os:getenv", {"key": "MONAI_EXT_TEST_VAR"}, env={"MONAI_EXT_TEST_VAR": "42"})
    # os.getenv returns a string, not a dict: run_fresh hands back whatever JSON the child printed
    assert result == "42"
    assert "MONAI_EXT_TEST_VAR" not in os.environ


def test_run_fresh_reports_a_failing_child():
    with pytest.raises(RuntimeError, match=r"os:getcwd\(\{'bad': 1\}\) failed in a fresh process"):
        run_fresh("os:getcwd", {"bad": 1})


_GROWTH = """
from monai_ext.bench.process import peak_bytes, reset_peak
reset_peak()
before, source = peak_bytes()
block = bytearray(64 * 2**20)
block[::4096] = b"\\x01" * len(block[::4096])  # touch every page
after, _ = peak_bytes()
print(source, after - before)
"""


def test_peak_bytes_grows_with_a_big_allocation():
    # in a fresh process: in the test process the peak may already lie above what the allocation reaches
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-c", _GROWTH], env=env, capture_output=True, text=True, check=True)
    source, growth = out.stdout.split()
    assert source in ("VmHWM", "ru_maxrss")
    assert int(growth) >= 60 * 2**20
