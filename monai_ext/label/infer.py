"""MONAI Label inference task for a monai_ext bundle, and the errors it tells apart (bad input, untrained weights,
weights being written, the server running out of memory)."""

from __future__ import annotations

import copy
import glob
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from monai.transforms import Spacing, Spacingd
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.utils.others.generic import strtobool

from monai_ext.label.discovery import apply_overrides, is_initial_weights
from monai_ext.label.transforms import shield_transforms

__all__ = [
    "WEIGHTS_KEY",
    "ImageError",
    "InputError",
    "MonaiExtInferTask",
    "UntrainedWeightsError",
    "Weights",
    "WeightsUnavailableError",
    "is_out_of_memory",
    "read_weights",
]

logger = logging.getLogger(__name__)

# the key of the request / data dictionary (and of the result params) that says which weights ran
WEIGHTS_KEY = "weights"


class InputError(ValueError):
    """A request parameter cannot be used: the client can fix it (HTTP 422)."""


class ImageError(InputError):
    """The request's image cannot be read or used by the bundle (not an image, wrong dimensions or channels)."""


class UntrainedWeightsError(RuntimeError):
    """The model holds freshly initialised weights and the request did not set ``allow_untrained`` (HTTP 409)."""


class WeightsUnavailableError(RuntimeError):
    """``model.pt`` is missing or being written and no earlier weights are loaded: retry (HTTP 503)."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error``, or an exception it was raised from, is the CPU or GPU allocator running out of memory."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
            return True
        if isinstance(error, RuntimeError) and ("out of memory" in str(error) or "can't allocate memory" in str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


@dataclass(frozen=True)
class Weights:
    """The weights a model runs with: ``trained`` (False for the freshly initialised weights the server saved at its
    first start) and ``modified``, the weights file's modification time (ISO 8601, UTC)."""

    trained: bool
    modified: str

    def as_dict(self) -> dict[str, object]:
        return {"trained": self.trained, "modified": self.modified}


def _signature(stat: os.stat_result) -> tuple[int, int, int]:
    # a replace gives a new inode; a write in place changes the size or the modification time
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def file_signature(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(inode, size, mtime_ns)`` of ``path``: a new value means a new or rewritten file."""
    return _signature(os.stat(path))


def read_weights(path: str | os.PathLike) -> tuple[Mapping[str, torch.Tensor], tuple[int, int, int], Weights]:
    """Read the state dict in ``path`` only if the file is complete.

    The file is opened once, so an ``os.replace`` during the read (an atomic save) cannot mix two files. A file that
    is missing (a save that deletes first), that does not load (a save still writing it), or whose size or
    modification time changes while it is read (a save writing in place) is refused.

    Returns:
        the state dict (the ``"model"`` entry of a checkpoint dict), the file's signature (inode, size, mtime in ns)
        and its :class:`Weights`.

    Raises:
        WeightsUnavailableError: the file is missing or incomplete; read it again after the save.
        ValueError: ``models/initial_weights.json`` beside it is not readable (see
            :func:`monai_ext.label.discovery.is_initial_weights`).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            before = os.fstat(f.fileno())
            state = torch.load(f, map_location="cpu", weights_only=True)
            after = os.fstat(f.fileno())
    except FileNotFoundError as e:
        raise WeightsUnavailableError(f"{path.name} is missing (a save in progress?)") from e
    except Exception as e:  # a truncated zip, a partial pickle: a save still writing the file
        if is_out_of_memory(e):
            raise
        raise WeightsUnavailableError(f"{path.name} does not load ({type(e).__name__}: {e}); being saved?") from e
    if _signature(before) != _signature(after):
        raise WeightsUnavailableError(f"{path.name} changed while it was read (a save writing it in place)")
    state = state.get("model", state) if isinstance(state, Mapping) else state
    modified = datetime.fromtimestamp(before.st_mtime_ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")
    return state, _signature(before), Weights(not is_initial_weights(path.parent, state), modified)


def _flag(request: Mapping, key: str) -> bool:
    value = request.get(key, False)
    try:
        return strtobool(value if isinstance(value, bool) else str(value))
    except ValueError as e:
        raise InputError(f"{key} must be true or false, got {value!r}") from e


@dataclass
class _Loaded:
    path: str
    signature: tuple[int, int, int]
    weights: Weights
    network: torch.nn.Module | None = None


class MonaiExtInferTask(BundleInferTask):
    """:class:`BundleInferTask` for a prepared bundle working copy, with config overrides, safe weight reloads and
    errors that say whose fault they are.

    - the bundle's ``Spacingd`` runs without MONAI Label's ``image_path`` string entry (see
      :mod:`monai_ext.label.transforms`);
    - building the transforms and inferer from the shared bundle config is serialised, so concurrent requests do
      not parse the same config at once;
    - ``models/model.pt`` is reloaded when its inode, size or modification time changed, and only once it is complete
      (:func:`read_weights`); while a save is under way the weights loaded before keep serving;
    - freshly initialised weights (see :func:`monai_ext.label.discovery.record_initial_weights`) are refused with
      :class:`UntrainedWeightsError` unless the request (or the server's ``--conf allow_untrained true``) sets
      ``allow_untrained``; ``info()["weights"]`` and each result's ``weights`` param say whether the weights are
      trained and when the file was written;
    - a pre-transform failure (unreadable file, not an image, wrong dimensions or channels) is an :class:`ImageError`,
      unless the allocator ran out of memory (:func:`is_out_of_memory`);
    - ``model_filename`` may only name a ``*.pt`` file of the bundle's ``models/`` folder.

    Args:
        path: the bundle working copy (``configs/``, ``models/model.pt``).
        conf: the app's configuration strings (``preload``, ``allow_untrained``).
        overrides: ``{config_id: value}`` set on ``inference.json`` (e.g. a tiny ``network_def#filters``).
        kwargs: passed to :class:`BundleInferTask`.
    """

    def __init__(self, path: str, conf: Mapping[str, str], overrides: Mapping[str, object] | None = None, **kwargs):
        self._overrides = dict(overrides or {})
        self._lock = threading.RLock()
        self._status: _Loaded | None = None  # the weights on disk as last read (for info())
        super().__init__(path, dict(conf), load_strict=True, **kwargs)
        self._config["allow_untrained"] = _flag(conf, "allow_untrained")

    def _load_bundle_config(self, path, config):
        parser = super()._load_bundle_config(path, config)
        apply_overrides(parser, self._overrides)
        return parser

    def info(self) -> dict:
        info = super().info()
        try:
            info[WEIGHTS_KEY] = self.weights().as_dict()
        except (WeightsUnavailableError, ValueError) as e:
            info[WEIGHTS_KEY] = {"trained": None, "modified": None, "problem": str(e)}
        return info

    def weights(self) -> Weights:
        """The weights in ``models/model.pt`` now (re-read only when the file changed).

        Raises:
            WeightsUnavailableError: the file is missing or being written and was never read before.
        """
        path = self.path[0]
        with self._lock:
            status = self._status
            try:
                current = _signature(os.stat(path))
            except FileNotFoundError:
                current = None
            if status is None or status.signature != current:
                try:
                    _, signature, weights = read_weights(path)
                    status = self._status = _Loaded(path, signature, weights)
                except WeightsUnavailableError:
                    if status is None:
                        raise
            return status.weights

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        with self._lock:
            return shield_transforms(list(super().pre_transforms(data)), (Spacingd, Spacing))

    def run_pre_transforms(self, data, transforms):
        try:
            return super().run_pre_transforms(data, transforms)
        except Exception as e:
            if is_out_of_memory(e):
                raise
            cause = e
            while cause.__cause__ is not None:  # monai wraps a transform's error in "applying transform ..."
                cause = cause.__cause__
            raise ImageError(f"{type(cause).__name__}: {cause}") from e

    def inferer(self, data=None):
        with self._lock:
            return super().inferer(data)

    def post_transforms(self, data=None) -> Sequence[Callable]:
        with self._lock:
            return super().post_transforms(data)

    def _weights_path(self, data) -> str:
        name = (data or {}).get("model_filename")
        name = name[0] if isinstance(name, (list, tuple)) and name else name
        default = self.path[0]
        if not name or name == os.path.basename(default):
            return default
        models = os.path.dirname(default)
        choices = sorted(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(models), "*.pt")))
        if name not in choices:
            raise InputError(f"model_filename must be one of the bundle's weight files {choices}")
        return os.path.join(models, name)

    def _get_network(self, device, data):
        path = self._weights_path(data)
        with self._lock:
            cached = self._networks.get(device)
            try:
                current = _signature(os.stat(path))
            except FileNotFoundError:
                current = None
            if cached is not None and cached.path == path and cached.signature == current:
                loaded = cached
            else:
                try:
                    state, signature, weights = read_weights(path)
                except WeightsUnavailableError as e:
                    if cached is None or cached.path != path:
                        raise WeightsUnavailableError(f"{e}; retry in a moment") from e
                    logger.warning("%s; serving the weights of %s until it is complete", e, cached.weights.modified)
                    loaded = cached
                else:
                    network = copy.deepcopy(self.network).to(torch.device(device))
                    network.load_state_dict(state, strict=self.load_strict)
                    network.eval()
                    loaded = _Loaded(path, signature, weights, network)
                    self._networks[device] = loaded
                    if path == self.path[0]:
                        self._status = _Loaded(path, signature, weights)
                    logger.info("loaded %s on %s (%s)", path, device, weights)
        if data is not None:
            data[WEIGHTS_KEY] = loaded.weights.as_dict()
            if not loaded.weights.trained and not _flag(data, "allow_untrained"):
                name = os.path.basename(self.bundle_path)
                raise UntrainedWeightsError(
                    f"{name} has untrained (freshly initialised) weights, saved {loaded.weights.modified}: train it "
                    f"first (PUT /datastore/label, then POST /train/{name}), or set allow_untrained to true in the "
                    "request's params to run them anyway"
                )
        return loaded.network

    def writer(self, data, extension=None, dtype=None):
        result_file, result = super().writer(data, extension, dtype)
        result[WEIGHTS_KEY] = data.get(WEIGHTS_KEY)
        return result_file, result
