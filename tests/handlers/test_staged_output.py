"""Tests of StagedOutput: an engine's files reach output_dir only when the whole run completes."""

from __future__ import annotations

import pytest
from ignite.engine import Engine, Events

from monai_ext.handlers import StagedOutput


def _engine(handler: StagedOutput, fail_at: int | None = None, subdir: bool = False) -> Engine:
    """An engine writing ``case_<batch>.txt`` (optionally under ``sub/``) into the staging dir per iteration."""

    def step(engine: Engine, batch: int) -> None:
        if engine.state.iteration == fail_at:
            raise RuntimeError(f"bad case {batch}")
        folder = handler.staging_dir / "sub" if subdir else handler.staging_dir
        folder.mkdir(exist_ok=True)
        (folder / f"case_{batch}.txt").write_text(f"prediction {batch}")

    engine = Engine(step)
    handler.attach(engine)
    return engine


def test_default_staging_dir_is_beside_output_dir(tmp_path):
    assert StagedOutput(tmp_path / "out").staging_dir == tmp_path / "out.partial"
    assert StagedOutput(str(tmp_path / "a" / "out")).staging_dir == tmp_path / "a" / "out.partial"
    assert StagedOutput(tmp_path / "out", tmp_path / "stage").staging_dir == tmp_path / "stage"


def test_output_dir_is_not_created_while_the_run_is_going(tmp_path):
    out = tmp_path / "out"
    handler = StagedOutput(out)
    seen = []
    engine = _engine(handler)
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(out.exists()))
    engine.run([0, 1], max_epochs=1)
    assert seen == [False, False]
    assert sorted(p.name for p in out.iterdir()) == ["case_0.txt", "case_1.txt"]


def test_success_publishes_every_file_and_removes_staging(tmp_path):
    out = tmp_path / "out"
    handler = StagedOutput(out)
    _engine(handler).run([0, 1, 2], max_epochs=1)
    assert sorted(p.name for p in out.iterdir()) == ["case_0.txt", "case_1.txt", "case_2.txt"]
    assert (out / "case_2.txt").read_text() == "prediction 2"
    assert not handler.staging_dir.exists()


def test_success_keeps_subfolders_and_replaces_same_named_files(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "case_1.txt").write_text("old")
    (out / "unrelated.txt").write_text("keep me")
    handler = StagedOutput(out, staging_dir=tmp_path / "stage")
    _engine(handler, subdir=True).run([0, 1], max_epochs=1)
    assert (out / "sub" / "case_0.txt").read_text() == "prediction 0"
    assert (out / "sub" / "case_1.txt").read_text() == "prediction 1"
    assert (out / "unrelated.txt").read_text() == "keep me"
    assert not (tmp_path / "stage").exists()


def test_failure_propagates_and_publishes_nothing_from_a_new_output_dir(tmp_path):
    out = tmp_path / "out"
    handler = StagedOutput(out)
    with pytest.raises(RuntimeError, match="bad case 1"):
        _engine(handler, fail_at=2).run([0, 1, 2], max_epochs=1)
    assert not handler.staging_dir.exists()
    assert not out.exists()  # not created, not even empty


def test_failure_leaves_an_existing_output_dir_with_only_its_old_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "unrelated.txt").write_text("keep me")
    handler = StagedOutput(out)
    with pytest.raises(RuntimeError, match="bad case 1"):
        _engine(handler, fail_at=2).run([0, 1, 2], max_epochs=1)
    assert [p.name for p in out.iterdir()] == ["unrelated.txt"]
    assert (out / "unrelated.txt").read_text() == "keep me"
    assert not handler.staging_dir.exists()


def test_failure_with_external_staging_dir_removes_it(tmp_path):
    out, stage = tmp_path / "out", tmp_path / "stage"
    handler = StagedOutput(out, staging_dir=stage)
    with pytest.raises(RuntimeError, match="bad case 1"):
        _engine(handler, fail_at=2).run([0, 1, 2], max_epochs=1)
    assert not stage.exists() and not out.exists()


def test_stale_staging_from_a_crashed_run_is_cleared_at_start(tmp_path):
    out = tmp_path / "out"
    handler = StagedOutput(out)
    stale = handler.staging_dir / "old" / "case_9.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("from a crashed run")
    out.mkdir()
    (out / "unrelated.txt").write_text("keep me")
    _engine(handler).run([0], max_epochs=1)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["case_0.txt", "unrelated.txt"]
    assert not handler.staging_dir.exists()


def test_staging_exists_and_is_empty_while_the_run_is_going(tmp_path):
    out = tmp_path / "out"
    handler = StagedOutput(out)
    handler.staging_dir.mkdir(parents=True)
    (handler.staging_dir / "stale.txt").write_text("x")
    seen = []

    def step(engine, batch):
        seen.append(sorted(p.name for p in handler.staging_dir.iterdir()))

    engine = Engine(step)
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    assert seen == [[]]


def test_output_dir_stays_clean_when_an_earlier_exception_handler_reraises(tmp_path):
    # a handler attached before StagedOutput that re-raises (as StatsHandler does) stops abort() from running
    out = tmp_path / "out"
    out.mkdir()
    (out / "unrelated.txt").write_text("keep me")
    handler = StagedOutput(out)

    def step(engine, batch):
        if engine.state.iteration == 2:
            raise RuntimeError("bad case")
        (handler.staging_dir / f"case_{batch}.txt").write_text("x")

    engine = Engine(step)

    @engine.on(Events.EXCEPTION_RAISED)
    def reraise(engine, e):
        raise e

    handler.attach(engine)
    with pytest.raises(RuntimeError, match="bad case"):
        engine.run([0, 1, 2], max_epochs=1)
    assert [p.name for p in out.iterdir()] == ["unrelated.txt"]
    assert [p.name for p in handler.staging_dir.iterdir()] == ["case_0.txt"]  # left beside, cleared next start


def test_a_terminated_run_publishes_nothing(tmp_path):
    out = tmp_path / "out"
    handler = StagedOutput(out)
    engine = _engine(handler)
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda e: e.terminate())
    engine.run([0, 1, 2, 3], max_epochs=1)
    assert not out.exists() and not handler.staging_dir.exists()
