"""MONAI Label training task for a monai_ext bundle."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from monailabel.tasks.train.bundle import BundleTrainTask

from monai_ext.label.discovery import apply_overrides

__all__ = ["MonaiExtTrainTask"]


class MonaiExtTrainTask(BundleTrainTask):
    """:class:`BundleTrainTask` for a prepared bundle working copy.

    Differences from the stock task: the app's config overrides are applied to ``train.json``; the device defaults to
    CPU when CUDA is absent; the bundle's ``epochs`` (which sizes its LR schedule) follows the request's
    ``max_epochs``; and the final weights of every run are saved as ``models/model.pt``, so the next
    inference uses them even when the run was too short for the bundle's validation (which keeps the best model).
    That save, like the bundle's own, is atomic (:class:`monai_ext.handlers.AtomicCheckpointSaver`): the server
    never loads a half-written ``model.pt``.

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
        return super().__call__(request, datastore)

    def _update_overrides(self, overrides):
        for key, value in self._overrides.items():
            overrides.setdefault(key, value)
        # our bundles size their LR schedule by the top-level "epochs"; keep it equal to the requested max_epochs
        if "epochs" in self.bundle_config:
            overrides["epochs"] = overrides[self.const.key_train_trainer_max_epochs()]
        handlers = list(overrides.get(self.const.key_train_handlers(), []))
        handlers = [h for h in handlers if not (isinstance(h, dict) and h.get("final_filename"))]
        handlers.append(
            {
                "_target_": "monai_ext.handlers.AtomicCheckpointSaver",
                "save_dir": os.path.join(self.bundle_path, "models"),
                "save_dict": {"model": f"@{self.const.key_network()}"},
                "save_final": True,
                "final_filename": self.const.model_pytorch(),
                "save_interval": 0,
            }
        )
        overrides[self.const.key_train_handlers()] = handlers
        return overrides
