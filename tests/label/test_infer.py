"""The MONAI Label inference task in process: weights reloaded only when complete, untrained weights refused unless
allowed, ``model_filename`` confined to the models folder, and the kinds of error the app maps to HTTP statuses."""

from __future__ import annotations

import logging
import os
from io import BytesIO
from pathlib import Path

import pytest
import torch

if os.environ.get("MONAI_EXT_REQUIRE_LABEL") == "1":
    import monailabel  # noqa: F401
else:
    pytest.importorskip("monailabel")

from monai_ext.bundles import bundle_dir  # noqa: E402
from monai_ext.label.discovery import discover_bundles  # noqa: E402
from monai_ext.label.infer import (  # noqa: E402
    ImageError,
    InputError,
    MonaiExtInferTask,
    UntrainedWeightsError,
    WeightsUnavailableError,
    is_out_of_memory,
    read_weights,
)

TINY = {"num_classes": 3, "network_def#filters": [8, 16, 32, 64, 128]}
ALLOW = {"allow_untrained": True}


@pytest.fixture
def task(tmp_path, monkeypatch):
    """The inference task of a tiny ssh_unet working copy holding freshly initialised weights."""
    root = tmp_path / "bundles"
    root.mkdir()
    (root / "ssh_unet").symlink_to(bundle_dir("ssh_unet"))
    monkeypatch.setenv("MONAI_EXT_BUNDLES", str(root))
    (check,) = discover_bundles(["ssh_unet"], tmp_path / "work", {"ssh_unet": TINY})
    assert check.error is None, check.error
    return MonaiExtInferTask(str(check.path), {}, TINY)


def _model(task):
    return task.path[0]


def _shifted(data: bytes) -> tuple[dict, bytes]:
    """Trained-looking weights: those saved in ``data`` shifted by 0.5, as a state dict and as saved bytes."""
    state = torch.load(BytesIO(data), weights_only=True)
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()}
    buffer = BytesIO()
    torch.save(state, buffer)
    return state, buffer.getvalue()


def _replace(path, data: bytes):
    partial = f"{path}.partial"
    with open(partial, "wb") as f:
        f.write(data)
    os.replace(partial, path)


def test_read_weights_refuses_incomplete_files(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    state = {"w": torch.arange(4.0)}
    torch.save(state, path)
    read, _, weights = read_weights(path)
    assert torch.equal(read["w"], state["w"])
    assert weights.trained  # no record of initial weights beside it
    torch.save({"model": state}, path)  # a checkpoint dict: its "model" entry
    assert torch.equal(read_weights(path)[0]["w"], state["w"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a save still writing
    with pytest.raises(WeightsUnavailableError, match="model.pt does not load"):
        read_weights(path)
    path.unlink()  # a save that deletes first
    with pytest.raises(WeightsUnavailableError, match="model.pt is missing"):
        read_weights(path)
    path.write_bytes(data)
    load = torch.load

    def load_while_written(f, **kwargs):  # a writer touching the file in place during the read
        os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 10**9))
        return load(f, **kwargs)

    monkeypatch.setattr(torch, "load", load_while_written)
    with pytest.raises(WeightsUnavailableError, match="changed while it was read"):
        read_weights(path)


def test_network_reloaded_only_from_complete_files(task, caplog):
    first = task._get_network("cpu", data := dict(ALLOW))
    assert data["weights"]["trained"] is False
    assert task._get_network("cpu", dict(ALLOW)) is first  # unchanged file: the cached network
    complete = Path(_model(task)).read_bytes()
    with open(_model(task), "r+b") as f:  # overwritten in place, half written
        f.truncate(len(complete) // 2)
    with caplog.at_level(logging.WARNING, logger="monai_ext.label.infer"):
        assert task._get_network("cpu", dict(ALLOW)) is first
    assert "model.pt does not load" in caplog.text and "serving the weights of" in caplog.text
    trained, saved = _shifted(complete)
    _replace(_model(task), saved)  # an atomic save
    second = task._get_network("cpu", data := {})  # trained: no need to allow untrained weights
    assert second is not first and data["weights"]["trained"] is True
    for key, value in second.state_dict().items():
        assert torch.equal(value, trained[key]), key
    modified = data["weights"]["modified"]
    assert task.info()["weights"] == {"trained": True, "modified": modified}


def test_untrained_weights_refused_unless_allowed(task):
    with pytest.raises(UntrainedWeightsError, match="ssh_unet has untrained .* allow_untrained to true"):
        task._get_network("cpu", {})
    assert task._get_network("cpu", {"allow_untrained": "true"}) is not None
    with pytest.raises(InputError, match="allow_untrained must be true or false, got 'maybe'"):
        task._get_network("cpu", {"allow_untrained": "maybe"})
    assert task.info()["weights"] == task.weights().as_dict() and task.weights().trained is False
    allowed = MonaiExtInferTask(task.bundle_path, {"allow_untrained": "true"}, TINY)  # the server-wide default
    assert allowed.config()["allow_untrained"] is True


def test_no_weights_file_yet_is_unavailable(task):
    os.remove(_model(task))
    with pytest.raises(WeightsUnavailableError, match="model.pt is missing .* retry in a moment"):
        task._get_network("cpu", dict(ALLOW))
    assert task.info()["weights"]["trained"] is None and "missing" in task.info()["weights"]["problem"]


def test_model_filename_only_from_the_models_folder(task):
    for name in ("../configs/inference.json", "/etc/hostname", "nope.pt"):
        with pytest.raises(InputError, match=r"model_filename must be one of .*\['model.pt'\]"):
            task._get_network("cpu", {**ALLOW, "model_filename": name})
    assert task._get_network("cpu", {**ALLOW, "model_filename": ["model.pt"]}) is not None
    _replace(Path(_model(task)).with_name("other.pt"), Path(_model(task)).read_bytes())
    assert task._get_network("cpu", {**ALLOW, "model_filename": "other.pt"}) is not None


def test_pre_transform_failures_are_image_errors_unless_out_of_memory(task):
    def bad_channels(data):
        raise ValueError("case.nii.gz: got 2 channel(s), the network expects 1")

    def out_of_memory(data):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(ImageError, match="ValueError: case.nii.gz: got 2 channel"):
        task.run_pre_transforms({"image": "x"}, [bad_channels])
    with pytest.raises(torch.OutOfMemoryError):
        task.run_pre_transforms({"image": "x"}, [out_of_memory])


@pytest.mark.parametrize(
    "error, expected",
    [
        (MemoryError(), True),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 4 bytes"), True),
        (ValueError("needs spatial sizes divisible by [16, 16, 16]"), False),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
    ],
)
def test_is_out_of_memory(error, expected):
    assert is_out_of_memory(error) is expected
    try:  # also when wrapped, as monai wraps a transform's error
        raise RuntimeError("applying transform <Spacingd>") from error
    except RuntimeError as wrapped:
        assert is_out_of_memory(wrapped) is expected
