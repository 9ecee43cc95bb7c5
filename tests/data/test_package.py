"""Tests of the ``monai_ext.data`` package as a whole: its public names and an import graph without cycles."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import monai_ext.data

PACKAGE = Path(monai_ext.data.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")

# where each public name of monai_ext.data lives
PUBLIC = {
    "LABELS": "vessels",
    "make_phantom": "vessels",
    "LESION_LABELS": "lesions",
    "MODALITIES": "lesions",
    "make_lesion_phantom": "lesions",
    "write_msd_dataset": "decathlon",
    "Datalist": "datalist",
    "check_datalist": "datalist",
    "load_datalist": "datalist",
    "split_datalist": "datalist",
}


def test_public_names_unchanged_and_each_from_its_module():
    assert sorted(monai_ext.data.__all__) == sorted(PUBLIC)
    for name, module in PUBLIC.items():
        assert getattr(monai_ext.data, name) is getattr(sys.modules[f"monai_ext.data.{module}"], name)


def test_modules_are_the_expected_small_ones():
    assert MODULES == ["checks", "datalist", "decathlon", "geometry", "lesions", "tasks", "vessels", "volume_checks"]


def _imported_siblings(module: str) -> set[str]:
    """Modules of monai_ext.data that ``module`` imports anywhere in its source (top level or inside functions)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                found.update(alias.name for alias in node.names)
            elif node.level == 0 and (node.module or "").startswith("monai_ext.data."):
                found.add(node.module.split(".")[2])
            elif node.level == 0 and node.module == "monai_ext.data":
                found.add("__init__")
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("monai_ext.data."))
    return found & {*MODULES, "__init__"}


def test_import_graph_has_no_cycle_and_keeps_its_layers():
    graph = {module: _imported_siblings(module) for module in MODULES}
    assert all("__init__" not in deps for deps in graph.values()), graph  # nothing imports back from the package
    assert graph["checks"] == set() and graph["geometry"] == set()
    assert graph["vessels"] <= {"checks", "geometry"} and graph["lesions"] <= {"checks", "geometry"}
    assert "decathlon" not in graph["tasks"]
    # topological order exists: repeatedly remove modules whose imports are all removed
    remaining = dict(graph)
    while remaining:
        ready = [m for m, deps in remaining.items() if not deps & remaining.keys()]
        assert ready, f"import cycle among {sorted(remaining)}: {remaining}"
        for m in ready:
            del remaining[m]


# Run in a fresh interpreter: for each module, sys.modules is cleared of monai_ext and the two packages are stubbed
# (so that neither package __init__ runs and loads its siblings first), then the module alone is imported; printed is
# what of monai_ext.data it loaded.
_ALONE = """
import importlib, json, sys, types
loaded = {}
for module in sys.argv[2:]:
    for name in [n for n in sys.modules if n == "monai_ext" or n.startswith("monai_ext.")]:
        del sys.modules[name]
    for name, path in (("monai_ext", sys.argv[1] + "/.."), ("monai_ext.data", sys.argv[1])):
        stub = types.ModuleType(name)
        stub.__path__ = [path]
        sys.modules[name] = stub
    importlib.import_module("monai_ext.data." + module)
    loaded[module] = sorted(n.split(".")[2] for n in sys.modules if n.startswith("monai_ext.data."))
print(json.dumps(loaded))
"""


def test_each_module_imports_alone_in_a_fresh_interpreter():
    result = subprocess.run(
        [sys.executable, "-c", _ALONE, str(PACKAGE), *MODULES], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded == {
        "checks": ["checks"],
        "datalist": ["checks", "datalist", "volume_checks"],
        "decathlon": ["checks", "decathlon", "geometry", "lesions", "tasks", "vessels"],
        "geometry": ["geometry"],
        "lesions": ["checks", "geometry", "lesions"],
        "tasks": ["checks", "geometry", "lesions", "tasks", "vessels"],
        "vessels": ["checks", "geometry", "vessels"],
        "volume_checks": ["checks", "volume_checks"],
    }
