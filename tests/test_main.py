"""Tests of the ``python -m monai_ext`` command line and of the bundle lookup it reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import monai
import pytest
import torch

import monai_ext
from monai_ext import __main__ as cli
from monai_ext.bundles import bundle_dir, list_bundles

REPO = Path(__file__).resolve().parents[1]


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MONAI_EXT_BUNDLES"}
    env["PAGER"] = "cat"  # fire pages long help on a terminal; never wait for one here
    return subprocess.run(
        [sys.executable, "-m", "monai_ext", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_every_command(tmp_path):
    proc = _run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    for command in ("demo", "phantom", "bench", "label", "info", "list"):
        assert f"\n     {command}\n" in text, text
    assert "Medical Segmentation Decathlon layout" in text  # the phantom docstring's first line


def test_help_after_arguments_shows_help_and_runs_nothing(monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(cli, "bench", lambda *a, **k: ran.append((a, k)))
    for argv in (["bench", "efficiency", "--help"], ["bench", "-h", "accuracy"]):
        monkeypatch.setattr(sys, "argv", ["monai_ext", *argv])
        with pytest.raises(SystemExit) as stop:
            cli.main()
        assert stop.value.code == 0
    assert ran == []  # fire printed the help of ``bench``; the benchmark did not start
    assert "NAME\n    monai_ext bench\n" in capsys.readouterr().err.replace("__main__.py", "monai_ext")
    assert cli._help_last(["bench", "--", "--help"]) == ["bench", "--", "--help"]
    assert cli._help_last(["demo", "--epochs", "3"]) == ["demo", "--epochs", "3"]


def test_info_prints_versions_and_the_ssh_unet_bundle(monkeypatch, capsys):
    # in-process (the --help test above already runs the real ``-m`` entry point): saves a 4 s interpreter start
    monkeypatch.delenv("MONAI_EXT_BUNDLES", raising=False)
    monkeypatch.setattr(sys, "argv", ["monai_ext", "info"])
    cli.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"monai_ext {monai_ext.__version__}, monai {monai.__version__}, torch {torch.__version__}"
    assert any(line.startswith("python ") and "CPU(s)" in line for line in lines)
    assert any(line.startswith("CUDA devices: ") for line in lines)
    bundles = next(line for line in lines if line.startswith("bundles: "))
    assert "ssh_unet" in bundles.removeprefix("bundles: ").split(", ")
    assert f"bundle folder: {Path(__file__).resolve().parents[1] / 'bundles'}" in lines


def test_phantom_command_writes_an_msd_dataset(tmp_path, monkeypatch, capsys):
    out = tmp_path / "phantom"
    argv = ["monai_ext", "phantom", str(out), "--num_train", "2", "--num_test", "1", "--size", "32"]
    monkeypatch.setattr(sys, "argv", argv)
    cli.main()
    assert f"wrote 2 training and 1 test cases; datalist: {out / 'dataset.json'}" in capsys.readouterr().out
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["numTraining"] == 2 and dataset["numTest"] == 1
    assert dataset["generator"]["shape"] == [32, 32, 32]
    assert len(list((out / "imagesTr").glob("*.nii.gz"))) == 2
    assert len(list((out / "imagesTs").glob("*.nii.gz"))) == 1


def test_list_bundles_finds_ssh_unet_in_the_checkout(monkeypatch):
    monkeypatch.delenv("MONAI_EXT_BUNDLES", raising=False)
    assert "ssh_unet" in list_bundles()
    path = bundle_dir("ssh_unet")
    assert path == REPO / "bundles" / "ssh_unet"
    assert (path / "configs" / "metadata.json").is_file()


def test_list_bundles_follows_the_environment_variable(tmp_path, monkeypatch):
    for name in ("zeta", "alpha"):
        (tmp_path / name / "configs").mkdir(parents=True)
        (tmp_path / name / "configs" / "metadata.json").write_text("{}")
    (tmp_path / "not_a_bundle" / "configs").mkdir(parents=True)  # no metadata.json
    monkeypatch.setenv("MONAI_EXT_BUNDLES", str(tmp_path))
    assert list_bundles() == ["alpha", "zeta"]
    assert bundle_dir("zeta") == tmp_path / "zeta"
    with pytest.raises(FileNotFoundError, match=r"bundle 'not_a_bundle' not found"):
        bundle_dir("not_a_bundle")


def test_bundle_dir_unknown_name_says_where_it_looked_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("MONAI_EXT_BUNDLES", raising=False)
    expected = r"bundle 'nope' not found in .*bundles \(found: \[.*'ssh_unet'.*\]\); set MONAI_EXT_BUNDLES"
    with pytest.raises(FileNotFoundError, match=expected):
        bundle_dir("nope")
    monkeypatch.setenv("MONAI_EXT_BUNDLES", str(tmp_path / "missing"))
    assert list_bundles() == []
    with pytest.raises(FileNotFoundError, match=r"not found in .*missing \(found: none\); set MONAI_EXT_BUNDLES"):
        bundle_dir("nope")


ACCURACY_DEFAULTS = {"task": "vessels_oblique", "recipe": "bundle", "jobs": 1}


def test_cli_bench_runs_the_chosen_suites(monkeypatch, tmp_path):
    import monai_ext.bench

    calls = []
    for name in ("efficiency", "attention", "deformable", "slice_groups", "whole_volume", "accuracy"):
        monkeypatch.setattr(monai_ext.bench, f"run_{name}", lambda *a, _n=name, **kw: calls.append((_n, a, kw)))
    out = str(tmp_path)
    cli.bench(quick=True, output_dir=out)
    assert calls == [
        (
            "efficiency",
            (),
            {
                "device": "cpu",
                "quick": True,
                "output_dir": out,
                "networks": None,
                "threads": None,
                "amp": False,
                "compile": False,
            },
        ),
        ("attention", (), {"quick": True, "output_dir": out}),
        ("deformable", (), {"quick": True, "output_dir": out}),
        ("slice_groups", (), {"quick": True, "output_dir": out}),
        ("whole_volume", (), {"device": "cpu", "quick": True, "output_dir": out}),
    ]
    calls.clear()
    cli.bench("accuracy", networks="dynunet_3d, ssh_unet", seeds="3,4", budget_s=5, output_dir=out)
    assert calls == [("accuracy", (out, ["dynunet_3d", "ssh_unet"], [3, 4], 5, False, "cpu", None), ACCURACY_DEFAULTS)]
    calls.clear()
    cli.bench("accuracy", networks=("dynunet_3d", "ssh_unet"), seeds=(3, 4), budget_s=5, output_dir=out)  # as fire
    cli.bench("accuracy", networks="ssh_unet", seeds=7, budget_s=5, output_dir=out)
    assert calls[0] == ("accuracy", (out, ["dynunet_3d", "ssh_unet"], [3, 4], 5, False, "cpu", None), ACCURACY_DEFAULTS)
    assert calls[1][1][1:3] == (["ssh_unet"], [7])
    calls.clear()
    cli.bench(suite="deformable", device="cuda")
    assert [name for name, _, _ in calls] == ["deformable"]
    calls.clear()
    cli.bench(suite="efficiency", amp=True, output_dir=out)
    assert [(name, kw["amp"]) for name, _, kw in calls] == [("efficiency", True)]
    calls.clear()
    cli.bench("accuracy", task="vessels", recipe="plain", jobs=2, output_dir=out)
    assert calls[0][2] == {"task": "vessels", "recipe": "plain", "jobs": 2}
    with pytest.raises(ValueError, match="suite must be one of"):
        cli.bench(suite="speed")


def test_list_prints_the_registry_table(monkeypatch, capsys):
    from monai_ext.networks import list_networks, network_table

    monkeypatch.setattr(sys, "argv", ["monai_ext", "list"])
    cli.main()
    assert capsys.readouterr().out.strip() == network_table().strip()
    monkeypatch.setattr(sys, "argv", ["monai_ext", "list", "--kind", "context"])
    cli.main()
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert len(rows) == len(list_networks(kind="context")) > 0 and all("| context |" in r for r in rows)
    with pytest.raises(ValueError, match="kind must be one of"):
        cli.networks(kind="4d")
