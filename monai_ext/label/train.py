"""MONAI Label training task for a monai_ext bundle."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from monailabel.tasks.train.bundle import BundleTrainTask

from monai_ext.handlers import save_atomic
from monai_ext.label.discovery import apply_overrides
from monai_ext.label.infer import file_signature

__all__ = ["FINAL_WEIGHTS", "MonaiExtTrainTask", "publish_final_weights"]

FINAL_WEIGHTS = "model_final.pt"
"""The weights at the end of the last training run, beside the served ``model.pt``."""


def _signature(path: Path) -> tuple[int, int, int] | None:
    """What the server compares to see a new ``model.pt`` (:func:`monai_ext.label.infer.file_signature`)."""
    return file_signature(path) if path.exists() else None


def publish_final_weights(models: str | os.PathLike, before: tuple[int, int, int] | None) -> bool:
    """After a training run, serve its final weights if the run saved no best-metric ``model.pt``.

    ``model.pt`` is the bundle's best-metric checkpoint; a run too short to validate never writes it, and the server
    would go on serving the weights from before the run. In that case ``model_final.pt`` is copied over ``model.pt``
    (atomically, :func:`monai_ext.handlers.save_atomic`).

    Args:
        models: the bundle's ``models`` folder.
        before: ``(inode, size, mtime_ns)`` of ``model.pt`` before the run, ``None`` if it did not exist.

    Returns:
        whether ``model.pt`` was replaced by the final weights.
    """
    models = Path(models)
    final, served = models / FINAL_WEIGHTS, models / "model.pt"
    if _signature(served) != before or not final.is_file():
        return False  # the run saved its best model (or saved nothing at all)

    def copy(_, f):
        with open(final, "rb") as src:
            shutil.copyfileobj(src, f)

    save_atomic(None, served, save=copy)
    return True


class MonaiExtTrainTask(BundleTrainTask):
    """:class:`BundleTrainTask` for a prepared bundle working copy.

    Differences from the stock task: the app's config overrides are applied to ``train.json``; the device defaults to
    CPU when CUDA is absent; the bundle's ``epochs`` (which sizes its LR schedule) follows the request's
    ``max_epochs``; and a run too short for the bundle's validation, which saves no best-metric ``models/model.pt``
    (the model the server runs), makes its final weights, which every bundle saves as ``models/model_final.pt``,
    the new ``model.pt`` (:func:`publish_final_weights`), so the next inference uses them. Every save is atomic
    (:class:`monai_ext.handlers.AtomicCheckpointSaver`): the server never loads a half-written ``model.pt``.

    Args:
        path: the bundle working copy.
        conf: the app's configuration strings.
        overrides: ``{config_id: value}`` for ``train.json`` (e.g. ``epochs``, ``val_interval``, a tiny network).
    """

    def __init__(self, path: str, conf: Mapping[str, str], overrides: Mapping[str, object] | None = None, **kwargs):
        self._overrides = dict(overrides or {})
        super().__init__(path, dict(conf), **kwargs)

    def _load_bundle_config(self, path, config):
        parser = super()._load_bundle_config(path, config)
        apply_overrides(parser, self._overrides)
        return parser

    def __call__(self, request, datastore):
        request = dict(request)
        if not torch.cuda.is_available() and str(request.get("device", "cuda")).startswith("cuda"):
            request["device"] = "cpu"
        models = Path(self.bundle_path, "models")
        before = _signature(models / "model.pt")
        result = super().__call__(request, datastore)
        publish_final_weights(models, before)
        return result

    def _update_overrides(self, overrides):
        for key, value in self._overrides.items():
            overrides.setdefault(key, value)
        # our bundles size their LR schedule by the top-level "epochs"; keep it equal to the requested max_epochs
        if "epochs" in self.bundle_config:
            overrides["epochs"] = overrides[self.const.key_train_trainer_max_epochs()]
        return overrides
