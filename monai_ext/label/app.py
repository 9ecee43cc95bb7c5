"""The MONAI Label app that serves every monai_ext bundle: one inference task and one training task per bundle.

Configuration (``--conf KEY VALUE`` of ``monailabel start_server``, all optional):

- ``bundles``: comma-separated bundle names (default: every folder under the bundles root).
- ``bundle_overrides``: per-bundle config overrides ``{bundle: {config_id: value}}`` as JSON or a JSON file path,
  applied to ``inference.json`` and ``train.json`` (``"*"`` applies to all), e.g. a tiny network for tests.
- ``workdir``: where the bundles' working copies (configs, ``models/model.pt``) live; default
  ``<studies>/.monai_ext_label``. Trained weights are kept there across restarts; the source bundles are not touched.
- ``preload``: ``true`` loads every network at start-up.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp

from monai_ext.label.discovery import BundleCheck, discover_bundles, overrides_for, parse_overrides
from monai_ext.label.infer import MonaiExtInferTask
from monai_ext.label.train import MonaiExtTrainTask

__all__ = ["MonaiExtLabelApp"]

logger = logging.getLogger(__name__)


class MonaiExtLabelApp(MONAILabelApp):
    """MONAI Label app for the local monai_ext bundles; downloads nothing and does not start SAM2.

    Broken bundle folders are reported at start-up (log and ``GET /info/`` under ``broken_bundles``) while the others
    are served. Requests for an unknown model or image, or with an image the bundle rejects, get an HTTP error that
    says what was wrong (404 / 422) instead of an internal error.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        conf = dict(conf or {})
        names = conf.get("bundles")
        names = [n.strip() for n in names.split(",") if n.strip()] if names else None
        self.bundle_overrides = parse_overrides(conf.get("bundle_overrides"))
        workdir = Path(conf.get("workdir") or os.path.join(studies, ".monai_ext_label"))
        self.bundle_checks: list[BundleCheck] = discover_bundles(names, workdir, self.bundle_overrides)
        self.broken_bundles = {c.name: c.error for c in self.bundle_checks if c.error}
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="monai_ext",
            description="monai_ext bundles: 3D context for 2D-like segmentation networks",
        )

    def init_infers(self):
        infers = {}
        for check in self.bundle_checks:
            if check.path is None:
                continue
            try:
                task = MonaiExtInferTask(str(check.path), self.conf, overrides_for(check.name, self.bundle_overrides))
            except Exception as e:  # a bundle whose transforms or metadata MONAI Label cannot use
                self.broken_bundles[check.name] = f"{type(e).__name__}: {e}"
                logger.error("bundle %s is not served: %s", check.name, self.broken_bundles[check.name])
                continue
            if task.is_valid():
                infers[check.name] = task
            else:
                self.broken_bundles[check.name] = "MONAI Label rejected the bundle (see the log)"
        return infers

    def init_trainers(self):
        trainers = {}
        for check in self.bundle_checks:
            if check.path is None or check.name in self.broken_bundles:
                continue
            task = MonaiExtTrainTask(str(check.path), self.conf, overrides_for(check.name, self.bundle_overrides))
            if task.is_valid():
                trainers[check.name] = task
        return trainers

    def info(self):
        meta = super().info()
        meta["broken_bundles"] = dict(self.broken_bundles)
        return meta

    def infer(self, request, datastore=None):
        model = request.get("model")
        if model not in self._infers:
            reason = f" ({self.broken_bundles[model]})" if model in self.broken_bundles else ""
            raise HTTPException(404, f"unknown model {model!r}{reason}; served models: {sorted(self._infers)}")
        image = request.get("image")
        if isinstance(image, str) and not os.path.exists(image):
            store = datastore or self.datastore()
            if not store.get_image_uri(image):
                raise HTTPException(
                    404, f"unknown image id {image!r}: not in the studies folder; upload the file instead (-F file=@)"
                )
        try:
            return super().infer(request, datastore)
        except HTTPException:
            raise
        except Exception as e:  # the bundle rejected the input (unreadable file, wrong dimensions or channels)
            logger.exception("inference with %s failed", model)
            raise HTTPException(422, f"inference with {model!r} failed on this image: {type(e).__name__}: {e}") from e
