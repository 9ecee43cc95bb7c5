"""The slice-axis rule holds across the package: one argument name (``spatial_dim``, MONAI's), nowhere another."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# slice-axis argument names this package used before it spoke one language; MONAI's RandFlipd keeps its own
# ``spatial_axis`` (flip axes), which bundle configs may pass to it and only to it
RETIRED = re.compile(r"\b(slice_dim|slice_axis|spatial_axis|inferer_axis|stem_stride|rsa_dims)\b")
FLIP_TARGETS = {"RandFlipd", "RandFlip", "Flipd", "Flip"}


def _texts():
    for path in sorted([*(REPO / "monai_ext").rglob("*.py"), *(REPO / "docs").rglob("*.md"), REPO / "README.md"]):
        yield path, path.read_text()
    for path in sorted((REPO / "bundles").glob("*/docs/*.md")):
        yield path, path.read_text()


@pytest.mark.parametrize(
    "path, text", list(_texts()), ids=lambda v: str(v.relative_to(REPO)) if isinstance(v, Path) else ""
)
def test_no_retired_slice_axis_name_in_code_or_docs(path, text):
    hits = [f"{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1) if RETIRED.search(line)]
    assert not hits, f"{path.relative_to(REPO)} uses a retired slice-axis name (use spatial_dim):\n" + "\n".join(hits)


def _config_nodes(node, parents=()):
    if isinstance(node, dict):
        yield node, parents
        for value in node.values():
            yield from _config_nodes(value, (*parents, node))
    elif isinstance(node, list):
        for value in node:
            yield from _config_nodes(value, parents)


@pytest.mark.parametrize(
    "path", sorted((REPO / "bundles").glob("*/configs/*.json")), ids=lambda p: f"{p.parent.parent.name}/{p.name}"
)
def test_bundle_configs_speak_spatial_dim(path):
    config = json.loads(path.read_text())
    for node, _ in _config_nodes(config):
        for key in node:
            if RETIRED.fullmatch(key):
                assert key == "spatial_axis" and node.get("_target_") in FLIP_TARGETS, (
                    f"{path}: {key!r} in {node.get('_target_', 'a config node')}; use spatial_dim"
                )
