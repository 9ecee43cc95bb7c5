"""Bundle discovery: working copies, initial weights, overrides, and the report of broken bundle folders."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from monai_ext.bundles import bundle_dir
from monai_ext.label.discovery import (
    INITIAL_WEIGHTS_RECORD,
    apply_overrides,
    discover_bundles,
    is_initial_weights,
    parse_overrides,
    record_initial_weights,
    weights_digest,
)

TINY = {"ssh_unet": {"num_classes": 3, "network_def#filters": "[8,16,32,64,128]"}}


@pytest.fixture
def root(tmp_path, monkeypatch):
    root = tmp_path / "bundles"
    root.mkdir()
    (root / "ssh_unet").symlink_to(bundle_dir("ssh_unet"))
    monkeypatch.setenv("MONAI_EXT_BUNDLES", str(root))
    return root


def test_parse_overrides(tmp_path):
    assert parse_overrides(None) == {}
    parsed = parse_overrides(json.dumps(TINY))
    assert parsed["ssh_unet"]["network_def#filters"] == [8, 16, 32, 64, 128]  # JSON strings decoded as the CLI does
    path = tmp_path / "o.json"
    path.write_text(json.dumps({"*": {"device": "cpu"}}))
    assert parse_overrides(str(path)) == {"*": {"device": "cpu"}}
    with pytest.raises(ValueError, match="bundle_name"):
        parse_overrides('{"ssh_unet": 3}')


def test_apply_overrides_skips_missing_parents():
    from monai.bundle import ConfigParser

    parser = ConfigParser({"network_def": {"filters": [1]}, "epochs": 5})
    apply_overrides(parser, {"network_def#filters": [2], "epochs": 1, "absent#key": 3, "new_top": 4})
    assert parser["network_def#filters"] == [2] and parser["epochs"] == 1 and parser["new_top"] == 4
    assert "absent" not in parser


def test_working_copy_with_initial_weights(root, tmp_path):
    from monai_ext.networks.nets import SSHUNet

    work = tmp_path / "work"
    source_files = sorted(p.name for p in bundle_dir("ssh_unet").rglob("*"))
    (check,) = discover_bundles(["ssh_unet"], work, parse_overrides(TINY))
    assert check.error is None and check.path == work / "ssh_unet"
    model = work / "ssh_unet" / "models" / "model.pt"
    # the initial weights are those of the tiny network the overrides ask for
    SSHUNet(in_channels=1, out_channels=3, filters=(8, 16, 32, 64, 128)).load_state_dict(
        torch.load(model, weights_only=True)
    )
    assert any("no trained weights" in w for w in check.warnings)
    # recorded as initial weights: reported untrained until something else is saved there
    state = torch.load(model, weights_only=True)
    assert (model.parent / INITIAL_WEIGHTS_RECORD).is_file() and is_initial_weights(model.parent, state)
    assert sorted(p.name for p in bundle_dir("ssh_unet").rglob("*")) == source_files  # the source is not touched
    # a second start keeps the weights; other overrides make them unusable, which is reported
    mtime = model.stat().st_mtime_ns
    (again,) = discover_bundles(["ssh_unet"], work, parse_overrides(TINY))
    assert again.error is None and not again.warnings and model.stat().st_mtime_ns == mtime
    other = {"ssh_unet": {**TINY["ssh_unet"], "network_def#filters": "[4,8,16,32,64]"}}
    (bad,) = discover_bundles(["ssh_unet"], work, parse_overrides(other))
    assert bad.path is None and "does not fit the network" in bad.error


def test_weights_digest_and_initial_weights_record(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3), "h": torch.ones(2, dtype=torch.bfloat16)}
    same = {k: v.clone() for k, v in reversed(state.items())}
    assert weights_digest(same) == weights_digest(state)  # values decide, not order or storage
    for changed in (
        {**state, "w": state["w"] + 1e-6},  # a value
        {**state, "w": state["w"].reshape(3, 2)},  # a shape
        {**state, "n": state["n"].to(torch.int32)},  # a dtype
        {"v": state["w"], "n": state["n"], "h": state["h"]},  # a name
    ):
        assert weights_digest(changed) != weights_digest(state)
    assert not is_initial_weights(tmp_path, state)  # no record: weights shipped with the bundle count as trained
    record_initial_weights(tmp_path, state)
    assert is_initial_weights(tmp_path, same) and not is_initial_weights(tmp_path, {**state, "n": torch.tensor(4)})
    assert sorted(p.name for p in tmp_path.iterdir()) == [INITIAL_WEIGHTS_RECORD]  # no temporary file left
    (tmp_path / INITIAL_WEIGHTS_RECORD).write_text("{}")
    with pytest.raises(ValueError, match="initial_weights.json is not a record of initial weights.*delete it"):
        is_initial_weights(tmp_path, state)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "configs/metadata.json is missing"),
        (lambda d: (d / "metadata.json").write_text("{"), "metadata.json is not valid JSON"),
        (lambda d: shutil.copy2(d.parent.parent / "ssh_unet" / "configs" / "metadata.json", d), "inference.json is"),
    ],
)
def test_broken_folder_reported_others_served(root, tmp_path, make, message):
    configs = root / "half" / "configs"
    configs.mkdir(parents=True)
    make(configs)
    checks = {c.name: c for c in discover_bundles(None, tmp_path / "work", parse_overrides(TINY))}
    assert set(checks) == {"half", "ssh_unet"}
    assert checks["ssh_unet"].error is None
    assert checks["half"].path is None and message in checks["half"].error


def test_unknown_bundle_name(root, tmp_path):
    (check,) = discover_bundles(["nope"], tmp_path / "work")
    assert check.path is None and "no bundle folder" in check.error and "ssh_unet" in check.error


def test_network_that_does_not_build(root, tmp_path):
    broken = root / "badnet"
    shutil.copytree(bundle_dir("ssh_unet"), broken)
    config = json.loads((broken / "configs" / "inference.json").read_text())
    config["network_def"]["_target_"] = "monai_ext.networks.nets.NoSuchNet"
    (broken / "configs" / "inference.json").write_text(json.dumps(config))
    (check,) = discover_bundles(["badnet"], tmp_path / "work")
    assert check.path is None and "NoSuchNet" in check.error


def test_default_names_follow_the_registry_then_other_folders(tmp_path):
    from monai_ext.label.discovery import default_bundle_names
    from monai_ext.networks import list_networks

    for name in ("zz_user", "thick2d", "ssh_unet", ".hidden"):
        (tmp_path / name).mkdir()
    registered = [e.bundle for e in list_networks(main_only=True)]
    names = default_bundle_names(tmp_path)
    assert names[-1] == "zz_user" and ".hidden" not in names
    assert names[:2] == sorted(["thick2d", "ssh_unet"], key=registered.index)
