"""Start a MONAI Label server with the monai_ext app: ``python -m monai_ext label --studies DIR``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["APP_DIR", "serve", "server_command"]

APP_DIR = Path(__file__).resolve().parent / "server_app"


def _names(bundles: str | Sequence[str] | None) -> str | None:
    if bundles is None or bundles == "":
        return None
    if isinstance(bundles, str):
        return ",".join(b.strip() for b in bundles.split(",") if b.strip())
    return ",".join(str(b) for b in bundles)


def server_command(
    studies: str | Path,
    bundles: str | Sequence[str] | None = None,
    port: int = 8000,
    host: str = "127.0.0.1",
    overrides: str | Mapping | None = None,
    workdir: str | Path | None = None,
    conf: Mapping[str, str] | None = None,
) -> list[str]:
    """The ``python -m monailabel.main start_server ...`` command line that :func:`serve` runs.

    Args:
        studies: folder of images (NIfTI); labels are saved in ``studies/labels``.
        bundles: bundle names (comma-separated string or a sequence); default every bundle found.
        port, host: where the server listens (loopback by default).
        overrides: per-bundle config overrides ``{bundle: {config_id: value}}`` (dict, JSON text or JSON file path).
        workdir: where the bundles' working copies and weights live (default ``<studies>/.monai_ext_label``).
        conf: further ``--conf`` pairs for the app or MONAI Label.
    """
    studies = Path(studies)
    if not studies.is_dir():
        raise FileNotFoundError(f"studies folder {studies} does not exist; create it and put NIfTI images in it")
    items = {"sam2": "false"}
    names = _names(bundles)
    if names:
        items["bundles"] = names
    if overrides:
        items["bundle_overrides"] = overrides if isinstance(overrides, str) else json.dumps(overrides)
    if workdir:
        items["workdir"] = str(workdir)
    items.update({k: str(v) for k, v in (conf or {}).items()})
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR), "--studies", str(studies)]
    cmd += ["--host", host, "--port", str(int(port))]
    for key, value in items.items():
        cmd += ["--conf", key, value]
    return cmd


def serve(
    studies: str | Path,
    bundles: str | Sequence[str] | None = None,
    port: int = 8000,
    host: str = "127.0.0.1",
    overrides: str | Mapping | None = None,
    workdir: str | Path | None = None,
) -> None:
    """Run a MONAI Label server with every monai_ext bundle in the foreground until Ctrl-C.

    ``python -m monai_ext label --studies DIR [--bundles a,b] [--port 8000] [--host 127.0.0.1]``. On POSIX this process
    becomes the server (``os.execv``: no second Python holding memory); elsewhere it waits for a child process and
    exits with its code when that fails.

    See :func:`server_command` for the arguments. Needs the label extra: ``pip install "monai-ext[label]"``.
    """
    try:
        import monailabel  # noqa: F401
    except ImportError as e:
        raise ImportError('MONAI Label is not installed: pip install "monai-ext[label]"') from e
    cmd = server_command(studies, bundles, port, host, overrides, workdir)
    print(" ".join(cmd), flush=True)
    if os.name == "posix":
        os.execv(cmd[0], cmd)
    try:
        code = subprocess.call(cmd)
    except KeyboardInterrupt:
        return
    if code:
        raise SystemExit(code)
