"""All-or-nothing outputs: write into a staging folder, publish only when the whole run succeeds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ignite.engine import Engine, Events

__all__ = ["StagedOutput"]


class StagedOutput:
    """Ignite handler that makes an evaluator's written files appear in ``output_dir`` only if the run completes.

    Point the writers (e.g. ``SaveImaged(output_dir=staging_dir)``) at ``staging_dir``. When the engine starts,
    a stale staging folder is cleared; when it completes, every file is moved into ``output_dir`` (replacing
    files of the same name); when it raises, the staging folder is deleted and the error propagates. So a bad
    case in the middle of a datalist leaves no partial set of predictions behind. Attach it before handlers
    that re-raise on ``EXCEPTION_RAISED`` (e.g. ``StatsHandler``), which stop later handlers from running; the
    staging folder sits beside ``output_dir``, never inside it, so even then ``output_dir`` stays clean.

    Args:
        output_dir: where finished outputs go.
        staging_dir: temporary folder; default ``<output_dir>.partial`` beside ``output_dir``.
    """

    def __init__(self, output_dir: str | os.PathLike, staging_dir: str | os.PathLike | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.staging_dir = (
            Path(staging_dir)
            if staging_dir is not None
            else self.output_dir.with_name(self.output_dir.name + ".partial")
        )

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.COMPLETED, self.publish)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.abort)

    def start(self, engine: Engine | None = None) -> None:
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        self.staging_dir.mkdir(parents=True)

    def publish(self, engine: Engine | None = None) -> None:
        if engine is not None and engine.should_terminate:  # stopped early (e.g. terminate()): not a full run
            shutil.rmtree(self.staging_dir, ignore_errors=True)
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.staging_dir.rglob("*")):
            if path.is_file():
                target = self.output_dir / path.relative_to(self.staging_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
        shutil.rmtree(self.staging_dir, ignore_errors=True)

    def abort(self, engine: Engine | None, e: BaseException) -> None:
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        raise e
