"""The bundles ship with the package: in a wheel as data files, found again by ``monai_ext.bundles``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import monai_ext.bundles as bundles_module
from monai_ext.bundles import bundle_dir, list_bundles

REPO = Path(__file__).resolve().parents[2]


def test_an_installed_copy_is_found_when_there_is_no_checkout(tmp_path, monkeypatch):
    # a wheel install: the package sits in site-packages (no bundles/ beside it), the bundles under <prefix>/share
    monkeypatch.delenv("MONAI_EXT_BUNDLES", raising=False)
    monkeypatch.setattr(bundles_module, "__file__", str(tmp_path / "site-packages" / "monai_ext" / "bundles.py"))
    prefix = tmp_path / "prefix"
    monkeypatch.setattr(bundles_module.sysconfig, "get_path", lambda name: str(prefix))
    assert list_bundles() == []  # nothing installed yet
    meta = prefix / "share" / "monai_ext" / "bundles" / "demo_bundle" / "configs" / "metadata.json"
    meta.parent.mkdir(parents=True)
    meta.write_text("{}")
    assert list_bundles() == ["demo_bundle"]
    assert bundle_dir("demo_bundle") == meta.parents[1]


def test_the_source_checkout_wins_over_an_installed_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("MONAI_EXT_BUNDLES", raising=False)
    (tmp_path / "share" / "monai_ext" / "bundles" / "other" / "configs").mkdir(parents=True)
    monkeypatch.setattr(bundles_module.sysconfig, "get_path", lambda name: str(tmp_path))
    assert bundle_dir("ssh_unet") == REPO / "bundles" / "ssh_unet"


@pytest.mark.slow
def test_the_wheel_carries_every_bundle_file(tmp_path):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("monai_ext", "bundles"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    subprocess.run([*cmd, "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("monai_ext-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n.split("/data/share/monai_ext/", 1)[1] for n in names if "/data/share/monai_ext/bundles/" in n}
    tracked = subprocess.run(["git", "ls-files", "bundles"], cwd=REPO, capture_output=True, text=True, check=True)
    expected = set(tracked.stdout.split())  # what the repository holds, not what runs left in the checkout
    assert len(list_bundles()) == 5 and shipped == expected
    assert "monai_ext/bundles.py" in names
