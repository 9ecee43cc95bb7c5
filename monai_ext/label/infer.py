"""MONAI Label inference task for a monai_ext bundle."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from monai.transforms import Spacing, Spacingd
from monailabel.tasks.infer.bundle import BundleInferTask

from monai_ext.label.discovery import apply_overrides
from monai_ext.label.transforms import shield_transforms

__all__ = ["MonaiExtInferTask"]


class MonaiExtInferTask(BundleInferTask):
    """:class:`BundleInferTask` for a prepared bundle working copy, with config overrides and two fixes.

    - the bundle's ``Spacingd`` runs without MONAI Label's ``image_path`` string entry (see
      :mod:`monai_ext.label.transforms`);
    - building the transforms and inferer from the shared bundle config is serialised, so concurrent requests do
      not parse the same config at once.

    Args:
        path: the bundle working copy (``configs/``, ``models/model.pt``).
        conf: the app's configuration strings (``preload``).
        overrides: ``{config_id: value}`` set on ``inference.json`` (e.g. a tiny ``network_def#filters``).
        kwargs: passed to :class:`BundleInferTask`.
    """

    def __init__(self, path: str, conf: Mapping[str, str], overrides: Mapping[str, object] | None = None, **kwargs):
        self._overrides = dict(overrides or {})
        self._lock = threading.RLock()
        super().__init__(path, dict(conf), **kwargs)

    def _load_bundle_config(self, path, config):
        parser = super()._load_bundle_config(path, config)
        apply_overrides(parser, self._overrides)
        return parser

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        with self._lock:
            return shield_transforms(list(super().pre_transforms(data)), (Spacingd, Spacing))

    def inferer(self, data=None):
        with self._lock:
            return super().inferer(data)

    def post_transforms(self, data=None) -> Sequence[Callable]:
        with self._lock:
            return super().post_transforms(data)
