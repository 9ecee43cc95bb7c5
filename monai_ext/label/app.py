"""The MONAI Label app that serves every monai_ext bundle: one inference task and one training task per bundle.

Configuration (``--conf KEY VALUE`` of ``monailabel start_server``, all optional):

- ``bundles``: comma-separated bundle names (default: every folder under the bundles root).
- ``bundle_overrides``: per-bundle config overrides ``{bundle: {config_id: value}}`` as JSON or a JSON file path,
  applied to ``inference.json`` and ``train.json`` (``"*"`` applies to all), e.g. a tiny network for tests.
- ``workdir``: where the bundles' working copies (configs, ``models/model.pt``) live; default
  ``<studies>/.monai_ext_label``. Trained weights are kept there across restarts; the source bundles are not touched.
- ``preload``: ``true`` loads every network at start-up.
- ``allow_untrained``: ``true`` runs freshly initialised weights without the request asking (``allow_untrained`` in
  its params); the default refuses them with HTTP 409.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp

from monai_ext.label.discovery import BundleCheck, discover_bundles, overrides_for, parse_overrides
from monai_ext.label.infer import (
    ImageError,
    InputError,
    MonaiExtInferTask,
    UntrainedWeightsError,
    WeightsUnavailableError,
    is_out_of_memory,
)
from monai_ext.label.train import MonaiExtTrainTask

__all__ = ["MonaiExtLabelApp"]

logger = logging.getLogger(__name__)

UNKNOWN_IMAGE = (
    "unknown image: give the id of an image of the datastore (GET /datastore/?output=all lists them) or upload the "
    "file (-F file=@image.nii.gz); the server reads no other file"
)


class MonaiExtLabelApp(MONAILabelApp):
    """MONAI Label app for the local monai_ext bundles; downloads nothing and does not start SAM2.

    Broken bundle folders are reported at start-up (log and ``GET /info/`` under ``broken_bundles``) while the others
    are served. Inference reads only images of the datastore (by id) and uploads (``/infer`` file uploads, which the
    server writes to a private temporary folder, and ``/session`` uploads); any other ``image`` is an unknown image
    (404), whether or not the path exists. Each failure gets an HTTP error that says what was wrong and whose fault it
    is, and the server keeps serving:

    - 404: unknown model or image; 422: the image (or a parameter) cannot be used, with the bundle's reason;
    - 409: the model has untrained weights and the request did not set ``allow_untrained``;
    - 503: the server ran out of memory, or ``model.pt`` is being written and no weights are loaded yet;
    - 500: any other failure inside the server (e.g. an exception inside the network).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        conf = dict(conf or {})
        names = conf.get("bundles")
        names = [n.strip() for n in names.split(",") if n.strip()] if names else None
        self.bundle_overrides = parse_overrides(conf.get("bundle_overrides"))
        workdir = Path(conf.get("workdir") or os.path.join(studies, ".monai_ext_label"))
        self.bundle_checks: list[BundleCheck] = discover_bundles(names, workdir, self.bundle_overrides)
        self.broken_bundles = {c.name: c.error for c in self.bundle_checks if c.error}
        self.upload_dir: str | None = None
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

    def server_mode(self, mode: bool):
        """In server mode, make the process's temporary folder (where MONAI Label writes ``/infer`` uploads) a private
        one, so that an upload can be told from any other path; it is removed when the server exits."""
        super().server_mode(mode)
        if mode and self.upload_dir is None:
            self.upload_dir = tempfile.mkdtemp(prefix="monai_ext_label_")
            tempfile.tempdir = self.upload_dir
            atexit.register(shutil.rmtree, self.upload_dir, ignore_errors=True)

    def _is_upload(self, path: str) -> bool:
        sessions = self.sessions()
        roots = [self.upload_dir, sessions.store_path if sessions else None]
        real = os.path.realpath(path)
        return any(root and real.startswith(os.path.realpath(root) + os.sep) for root in roots)

    def _check_request(self, request, datastore) -> str:
        """Raise a 404 unless the model is served and the image is a datastore id or an upload; return the name the
        image is shown under in error messages (never a server path)."""
        model = request.get("model")
        if model not in self._infers:
            reason = f" ({self.broken_bundles[model]})" if model in self.broken_bundles else ""
            raise HTTPException(404, f"unknown model {model!r}{reason}; served models: {sorted(self._infers)}")
        image = request.get("image")
        if not isinstance(image, str):  # an array from MONAI Label itself (e.g. a whole-slide region)
            return "this image"
        if (datastore or self.datastore()).get_image_uri(image):
            return f"image {image!r}"
        if self._is_upload(image):
            return "the uploaded image"
        raise HTTPException(404, UNKNOWN_IMAGE)

    def infer(self, request, datastore=None):
        shown = self._check_request(request, datastore)
        try:
            return super().infer(request, datastore)
        except HTTPException:
            raise
        except Exception as e:
            raise self._http_error(request, datastore, shown, e) from e

    def infer_wsi(self, request, datastore=None):
        self._check_request(request, datastore)
        return super().infer_wsi(request, datastore)

    def _http_error(self, request, datastore, shown: str, error: Exception) -> HTTPException:
        """The HTTP error for an inference failure: 4xx when the request can be fixed, 5xx when the server failed."""
        model = request.get("model")
        reason = str(error)
        image = request.get("image")
        if isinstance(image, str):  # name the image as the client did, never by its path on the server
            uri = (datastore or self.datastore()).get_image_uri(image)
            paths = {p for p in (uri, image, os.path.realpath(image)) if p and os.sep in p}
            for path in sorted(paths, key=len, reverse=True):
                reason = reason.replace(path, shown)
        if isinstance(error, InputError):
            what = f"cannot use {shown}" if isinstance(error, ImageError) else "refused a parameter"
            logger.warning("inference with %s %s: %s", model, what, reason)
            return HTTPException(422, f"{model!r} {what}: {reason}")
        if isinstance(error, UntrainedWeightsError):
            return HTTPException(409, reason)
        logger.error("inference with %s failed on %s", model, shown, exc_info=error)
        if isinstance(error, WeightsUnavailableError):
            return HTTPException(503, f"{model!r} has no complete weights file yet: {reason}")
        if is_out_of_memory(error):
            return HTTPException(
                503,
                f"{model!r} ran out of memory on {shown} ({type(error).__name__}: {reason}); retry with a smaller "
                "image, or run the server where it has more memory",
            )
        return HTTPException(
            500,
            f"inference with {model!r} failed inside the server ({type(error).__name__}: {reason}); a server-side "
            "failure: the server log has the traceback",
        )
