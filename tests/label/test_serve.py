"""``monai_ext.label.serve``: the server command line (no MONAI Label needed)."""

from __future__ import annotations

import json

import pytest

from monai_ext.label import APP_DIR, server_command


def test_server_command(tmp_path):
    cmd = server_command(tmp_path, "ssh_unet, rsanet", port=8123, overrides={"ssh_unet": {"epochs": 1}})
    assert cmd[1:5] == ["-m", "monailabel.main", "start_server", "--app"]
    assert cmd[5] == str(APP_DIR) and (APP_DIR / "main.py").is_file()
    conf = {cmd[i + 1]: cmd[i + 2] for i, c in enumerate(cmd) if c == "--conf"}
    assert conf["sam2"] == "false"
    assert conf["bundles"] == "ssh_unet,rsanet"
    assert json.loads(conf["bundle_overrides"]) == {"ssh_unet": {"epochs": 1}}
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    # fire passes "a,b" as a tuple
    cmd = server_command(tmp_path, ("cotr", "scaa"))
    assert cmd[cmd.index("bundles") + 1] == "cotr,scaa"


def test_server_command_missing_studies(tmp_path):
    with pytest.raises(FileNotFoundError, match="studies folder"):
        server_command(tmp_path / "nope")
