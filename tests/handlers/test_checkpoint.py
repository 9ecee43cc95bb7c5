"""Tests of the crash-safe checkpoints: save_atomic, AtomicCheckpointSaver and resume_from."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver

from monai_ext.handlers import AtomicCheckpointSaver, resume_from, save_atomic


def _files(folder) -> list[str]:
    """Every file in ``folder``, hidden temporary files included."""
    return sorted(p.name for p in folder.iterdir())


def _half_then_fail(monkeypatch):
    """Make ``torch.save`` write half of the real file and then raise, as a full disk would stop it."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if isinstance(f, (str, os.PathLike)):  # MONAI's saver writes to the path itself
            os.truncate(f, os.path.getsize(f) // 2)
        else:
            f.seek(f.tell() // 2)
            f.truncate()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save)


def _net(value: float) -> torch.nn.Linear:
    net = torch.nn.Linear(2, 1)
    torch.nn.init.constant_(net.weight, value)
    return net


def _engine(scores: list[float], handler) -> Engine:
    """An evaluator-like engine whose key metric at epoch ``e`` is ``scores[e - 1]``."""

    def step(engine, batch):
        return batch

    engine = Engine(step)

    @engine.on(Events.EPOCH_COMPLETED)
    def metric(engine):
        engine.state.metrics["dice"] = scores[engine.state.epoch - 1]

    handler.attach(engine)
    return engine


def test_save_atomic_writes_a_loadable_file_and_leaves_no_temporary(tmp_path):
    path = save_atomic({"w": torch.ones(3)}, tmp_path / "model.pt")
    assert path == tmp_path / "model.pt"
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    save_atomic({"w": torch.zeros(3)}, str(path))  # replaces
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(3))
    assert _files(tmp_path) == ["model.pt"]


def test_save_atomic_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_atomic({"w": torch.ones(3)}, path)
    before = path.read_bytes()
    _half_then_fail(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        save_atomic({"w": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert _files(tmp_path) == ["model.pt"]


def test_save_atomic_failure_on_a_new_path_writes_nothing(tmp_path):
    def broken(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt  # not an Exception: still cleaned up

    with pytest.raises(KeyboardInterrupt):
        save_atomic({}, tmp_path / "model.pt", save=broken)
    assert _files(tmp_path) == []


def test_save_atomic_file_mode_is_that_of_a_plain_open(tmp_path):
    save_atomic({}, tmp_path / "model.pt")
    (tmp_path / "plain").write_bytes(b"")
    assert (tmp_path / "model.pt").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_save_atomic_into_a_missing_folder_says_which(tmp_path):
    with pytest.raises(FileNotFoundError, match="the folder .*nowhere does not exist; create it first"):
        save_atomic({}, tmp_path / "nowhere" / "model.pt")


def test_a_reader_never_sees_a_partial_file(tmp_path):
    path = tmp_path / "model.pt"
    versions = [repr({"step": step, "pad": "x" * 40}).encode() for step in range(6)]
    seen, stop = [], threading.Event()

    def slow_save(data, f):  # small slow writes: a reader of a file written in place would catch it half-written
        for i in range(0, len(data), 4):
            f.write(data[i : i + 4])
            f.flush()
            time.sleep(0.0005)

    def read():
        while not stop.is_set():
            seen.append(path.read_bytes())

    save_atomic(versions[0], path, save=slow_save)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for data in versions[1:]:
            save_atomic(data, path, save=slow_save)
    finally:
        stop.set()
        reader.join()
    assert seen and set(seen) <= set(versions)
    assert path.read_bytes() == versions[-1]


@pytest.mark.parametrize("saver_class", [CheckpointSaver, AtomicCheckpointSaver], ids=["monai", "atomic"])
def test_failed_save_of_a_better_model(tmp_path, monkeypatch, saver_class):
    """MONAI's saver deletes model.pt before writing the new one: a failed save loses the best model; ours keeps it."""
    net = _net(1.0)
    saver = saver_class(
        str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="dice", key_metric_filename="model.pt"
    )
    engine = _engine([0.5, 0.7], saver)
    engine.run([0], max_epochs=1)
    before = (tmp_path / "model.pt").read_bytes()
    torch.nn.init.constant_(net.weight, 2.0)
    _half_then_fail(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        engine.run([0], max_epochs=2)
    if saver_class is CheckpointSaver:  # deleted, then half-written: what AtomicCheckpointSaver is for
        with pytest.raises(RuntimeError):
            torch.load(tmp_path / "model.pt", weights_only=True)
    else:
        assert (tmp_path / "model.pt").read_bytes() == before
        assert _files(tmp_path) == ["model.pt"]


def test_key_metric_model_is_a_plain_state_dict_replaced_only_by_better_scores(tmp_path):
    net = _net(0.0)
    saver = AtomicCheckpointSaver(
        str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="dice", key_metric_filename="model.pt"
    )
    engine = _engine([0.2, 0.9, 0.5], saver)

    @engine.on(Events.EPOCH_STARTED)
    def change_weights(engine):
        torch.nn.init.constant_(net.weight, float(engine.state.epoch))

    engine.run([0], max_epochs=3)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == {"weight", "bias"}
    assert torch.all(state["weight"] == 2.0)  # epoch 2 had the best score
    assert _files(tmp_path) == ["model.pt"]


def test_a_rotated_checkpoint_is_removed_only_after_its_successor_is_written(tmp_path, monkeypatch):
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": _net(0.0)}, save_key_metric=True, key_metric_name="dice")
    engine = _engine([0.2, 0.9], saver)  # file names carry the score: each better model replaces the last by a new name
    real_save, during = torch.save, []

    def save(obj, f, *args, **kwargs):
        during.append([name for name in _files(tmp_path) if not name.startswith(".")])
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    engine.run([0], max_epochs=2)
    assert during == [[], ["model_key_metric=0.2000.pt"]]  # the old one is still there while the new one is written
    assert _files(tmp_path) == ["model_key_metric=0.9000.pt"]


def test_interval_filename_is_rewritten_every_epoch_with_the_engine_state(tmp_path):
    net = _net(0.0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    engine = Engine(lambda e, b: b)
    saver = AtomicCheckpointSaver(
        str(tmp_path),
        {"model": net, "optimizer": optimizer, "trainer": engine},
        save_interval=1,
        interval_filename="checkpoint_last.pt",
    )
    saver.attach(engine)
    epochs = []

    @engine.on(Events.EPOCH_COMPLETED)
    def read(engine):
        state = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["trainer"]
        epochs.append(state["iteration"] // state["epoch_length"])

    engine.run([0, 1], max_epochs=3)
    assert epochs == [1, 2, 3]
    assert _files(tmp_path) == ["checkpoint_last.pt"]


def test_interval_filename_without_save_interval_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs save_interval > 0 .*set save_interval=1"):
        AtomicCheckpointSaver(str(tmp_path), {"model": _net(0.0)}, interval_filename="checkpoint_last.pt")


def test_final_checkpoint_is_atomic_and_keeps_its_name(tmp_path, monkeypatch):
    net = _net(1.0)
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": net}, save_final=True, final_filename="model.pt")
    engine = Engine(lambda e, b: b)
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    before = (tmp_path / "model.pt").read_bytes()
    _half_then_fail(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        engine.run([0], max_epochs=2)
    assert (tmp_path / "model.pt").read_bytes() == before
    assert _files(tmp_path) == ["model.pt"]


def test_key_metric_record_survives_a_resume(tmp_path):
    """A resumed run keeps the best model.pt of the first run until a better score comes."""
    net = _net(1.0)
    first = AtomicCheckpointSaver(
        str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="dice", key_metric_filename="model.pt"
    )
    _engine([0.9], first).run([0], max_epochs=1)
    save_atomic({"best": first.state_dict()}, tmp_path / "last.pt")
    assert [score for score, _ in first.state_dict()["_saved"]] == [0.9]

    torch.nn.init.constant_(net.weight, 5.0)
    resumed = AtomicCheckpointSaver(
        str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="dice", key_metric_filename="model.pt"
    )
    engine = _engine([0.5, 0.95], resumed)
    CheckpointLoader(str(tmp_path / "last.pt"), {"best": resumed}).attach(engine)
    engine.run([0], max_epochs=1)  # 0.5 < 0.9: model.pt keeps the first run's weights
    assert torch.all(torch.load(tmp_path / "model.pt", weights_only=True)["weight"] == 1.0)
    engine.run([0], max_epochs=2)  # 0.95 > 0.9
    assert torch.all(torch.load(tmp_path / "model.pt", weights_only=True)["weight"] == 5.0)


def test_state_dict_without_key_metric_is_empty(tmp_path):
    assert AtomicCheckpointSaver(str(tmp_path), {"model": _net(0.0)}, save_final=True).state_dict() == {}


@pytest.mark.parametrize("value, expected", [(True, True), ("true", True), (" True ", True), ("FALSE", False)])
def test_resume_from_reads_bools_and_command_line_text(tmp_path, value, expected):
    checkpoint = tmp_path / "checkpoint_last.pt"
    checkpoint.write_bytes(b"")
    assert resume_from(value, checkpoint) is expected
    assert resume_from(False, checkpoint) is False


def test_resume_without_a_checkpoint_starts_from_scratch_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="monai_ext.handlers.checkpoint"):
        assert resume_from("true", tmp_path / "checkpoint_last.pt") is False
    assert "checkpoint_last.pt does not exist: training starts from scratch" in caplog.text
    assert resume_from(False, tmp_path / "checkpoint_last.pt") is False


@pytest.mark.parametrize("value", ["yes", 1, None, "tru"])
def test_resume_from_refuses_other_values(tmp_path, value):
    with pytest.raises(ValueError, match="resume must be true or false, got .*pass --resume true or --resume false"):
        resume_from(value, tmp_path / "checkpoint_last.pt")


def test_temporary_files_are_hidden_beside_the_target(tmp_path):
    during = []

    def spy(obj, f):
        during.extend(_files(tmp_path))
        f.write(b"x")

    save_atomic({}, tmp_path / "model.pt", save=spy)
    assert len(during) == 1 and during[0].startswith(".model.pt.") and during[0].endswith(".tmp")
    assert _files(tmp_path) == ["model.pt"]
