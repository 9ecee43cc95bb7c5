"""Where the monai_ext bundles live, and how to run one of their configs as a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ALLOCATOR_ENV", "BundleRun", "bundle_dir", "bundles_root", "list_bundles", "run_bundle"]

# glibc returns freed blocks over 32 MB to the system and re-faults them on every forward pass;
# these settings keep them (1.5-1.9x faster MONAI networks on CPU for 15-40 % more peak memory).
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def bundles_root() -> Path:
    """``$MONAI_EXT_BUNDLES``, else the source checkout's ``bundles/``, else the copy that a wheel installs in
    ``<prefix>/share/monai_ext/bundles``."""
    env = os.environ.get("MONAI_EXT_BUNDLES")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1] / "bundles"
    installed = Path(sysconfig.get_path("data")) / "share" / "monai_ext" / "bundles"
    return installed if not checkout.is_dir() and installed.is_dir() else checkout


def list_bundles() -> list[str]:
    """Names of the bundles found (folders with ``configs/metadata.json``) under ``$MONAI_EXT_BUNDLES``, the
    source checkout's ``bundles/`` or, for an installed wheel, ``<prefix>/share/monai_ext/bundles``."""
    root = bundles_root()
    return sorted(p.parent.parent.name for p in root.glob("*/configs/metadata.json")) if root.is_dir() else []


def bundle_dir(name: str) -> Path:
    """Folder of bundle ``name``; FileNotFoundError names the bundles that exist and where they were sought."""
    path = bundles_root() / name
    if not (path / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(
            f"bundle {name!r} not found in {bundles_root()} (found: {list_bundles() or 'none'}); "
            "set MONAI_EXT_BUNDLES to the folder that holds the monai_ext bundles."
        )
    return path


@dataclass
class BundleRun:
    """What one ``python -m monai.bundle run`` process did."""

    returncode: int
    wall_s: float
    peak_rss_mb: float
    log_file: Path


def run_bundle(
    name: str,
    configs: Sequence[str],
    overrides: dict[str, object],
    log_file: str | os.PathLike,
    fast_allocator: bool = True,
    echo: Sequence[str] = ("Metrics --",),
) -> BundleRun:
    """Run ``python -m monai.bundle run`` on configs of bundle ``name`` in a child process.

    Args:
        name: bundle name (see :func:`list_bundles`).
        configs: config file names inside ``configs/``, merged in order (e.g. ``["train.json", "demo.json"]``).
        overrides: ``--key value`` pairs (e.g. ``{"bundle_root": ..., "dataset_dir": ...}``).
        log_file: the child's full output goes here.
        fast_allocator: run the child with :data:`ALLOCATOR_ENV`.
        echo: lines of the child's output containing one of these strings are also printed here, as progress.

    Returns:
        a :class:`BundleRun` with the exit code, wall time and the child's peak resident memory.
    """
    root = bundle_dir(name)
    files = "[" + ",".join(repr(str(root / "configs" / c)) for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files]
    cmd += ["--logging_file", str(root / "configs" / "logging.conf")]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    env = dict(os.environ, **(ALLOCATOR_ENV if fast_allocator else {}))
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log_file, "w", buffering=1) as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=root)
        for line in proc.stdout:
            log.write(line)
            if any(e in line for e in echo):
                print("   ", line.rstrip().split(" - ")[-1], flush=True)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return BundleRun(proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024.0, log_file)
