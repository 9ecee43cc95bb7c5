"""Checkpoints that survive a crash: atomic writes, and the switch that resumes a training run."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

__all__ = ["AtomicCheckpointSaver", "resume_from", "save_atomic"]

logger = logging.getLogger(__name__)


def save_atomic(obj: Any, path: str | os.PathLike, save: Callable[[Any, BinaryIO], None] | None = None) -> Path:
    """Write ``obj`` to ``path`` so that ``path`` holds either its old content or the complete new file, never a part.

    The object is written to a hidden temporary file in the same folder (``.<name>.<pid>.<random>.tmp``), flushed
    to disk and then renamed over ``path`` with ``os.replace``, which is atomic on one file system. A reader (the
    MONAI Label server reloading ``model.pt``, an evaluation run) therefore never sees a half-written file, and a
    kill, a full disk or an error during the write leaves the previous ``path`` intact. If the write raises, the
    temporary file is removed and the error propagates; after a SIGKILL mid-write the temporary file stays behind
    (its name says what it is) and ``path`` is untouched. The new file gets the permissions a plain ``open`` gives.

    Args:
        obj: what to save, e.g. a state dict or a checkpoint dict.
        path: the destination file; its folder must exist.
        save: ``save(obj, file)`` writing ``obj`` into an open binary file; default ``torch.save``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist.
        Exception: whatever ``save`` raises (nothing is left behind).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save {path}: the folder {path.parent} does not exist; create it first")
    save = torch.save if save is None else save
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


class _AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` with a fixed file name (as MONAI's), atomic writes, and removal after replacement.

    ignite's ``Checkpoint`` removes the file a new checkpoint replaces before writing the new one; here the removal
    is deferred until the new file is in place, so there is always one complete checkpoint on disk.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, require_empty=False)
        self.filename = filename
        self._replaced: list[str] = []

    def __call__(self, checkpoint: Any, filename: str, metadata: Any = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)
        for old in self._replaced:
            if old != filename:
                super().remove(old)
        self._replaced.clear()

    def _save_func(self, checkpoint: Any, path: Path, func: Callable) -> None:
        save_atomic(checkpoint, path, save=func)

    def remove(self, filename: str) -> None:
        self._replaced.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's :class:`~monai.handlers.CheckpointSaver` whose every write is atomic (see :func:`save_atomic`).

    MONAI's saver deletes the previous file (e.g. the best ``model.pt``) and then writes the new one in place, so a
    kill or a full disk during the save loses both. This saver writes each checkpoint to a temporary file and renames
    it over the old one; a file it replaces by another name (``n_saved`` rotation) is deleted only afterwards.

    It also makes the interval checkpoint resumable: ``interval_filename`` gives it a fixed name (e.g.
    ``checkpoint_last.pt``, overwritten every ``save_interval`` epochs), and :meth:`state_dict` /
    :meth:`load_state_dict` carry the key-metric record (best score so far and its file), so a resumed run keeps
    the best ``model.pt`` unless it beats that score. Put the saver in another saver's ``save_dict`` to record it.

    Args:
        save_dir, save_dict, args, kwargs: as :class:`~monai.handlers.CheckpointSaver` (``final_filename``,
            ``key_metric_filename``, ``save_interval``, ``n_saved``, ...).
        interval_filename: fixed file name of the interval checkpoint; default ``None`` keeps MONAI's
            ``checkpoint_epoch=N.pt`` names.

    Raises:
        ValueError: ``interval_filename`` without ``save_interval > 0``.
    """

    def __init__(
        self, save_dir: str, save_dict: dict, *args: Any, interval_filename: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(save_dir, save_dict, *args, **kwargs)
        if interval_filename is not None and self._interval_checkpoint is None:
            raise ValueError(
                f"interval_filename={interval_filename!r} needs save_interval > 0 (got {self.save_interval}); "
                "set save_interval=1 to write it every epoch"
            )
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is None:
                continue
            # MONAI's own disk saver carries the fixed names it was given (final_filename, key_metric_filename)
            filename = (
                interval_filename if checkpoint is self._interval_checkpoint else checkpoint.save_handler.filename
            )
            checkpoint.save_handler = _AtomicDiskSaver(save_dir, filename)

    def state_dict(self) -> dict:
        """The key-metric record (``{"_saved": [(score, filename), ...]}``); empty without ``save_key_metric``."""
        return dict(self._key_metric_checkpoint.state_dict()) if self._key_metric_checkpoint is not None else {}


def resume_from(resume: bool | str, checkpoint: str | os.PathLike) -> bool:
    """Whether a training run resumes from ``checkpoint``: ``resume`` is true and the file exists.

    The bundles' ``train.json`` enables its ``CheckpointLoader`` with this. ``resume`` may be a bool or the text a
    command line gives (``--resume true``: ``"true"`` / ``"false"``, any case). Resuming without a checkpoint is
    not an error (a first run, or a run killed before its first epoch ended): training starts from scratch and a
    warning says so.

    Raises:
        ValueError: ``resume`` is neither a bool nor ``"true"`` / ``"false"``.
    """
    if isinstance(resume, str) and resume.strip().lower() in ("true", "false"):
        resume = resume.strip().lower() == "true"
    if not isinstance(resume, bool):
        raise ValueError(f"resume must be true or false, got {resume!r}; pass --resume true or --resume false")
    if resume and not Path(checkpoint).is_file():
        logger.warning(f"resume requested but {checkpoint} does not exist: training starts from scratch")
        return False
    return resume
