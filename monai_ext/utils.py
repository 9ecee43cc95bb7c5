"""Small helpers shared by the bundles and the command line."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_file"]


def check_file(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` if it is a file, else raise FileNotFoundError saying what the file is and how to get it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ({what}).")
    return path
