"""Tests of OutputAsList: MONAI's loss transform reads the loss of a trainer that does not decollate."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine

from monai_ext.handlers import OutputAsList


def _engine(output) -> tuple[Engine, list]:
    """An engine whose every iteration returns ``output``, and the losses a handler attached after the wrapper saw."""
    engine = Engine(lambda engine, batch: output)
    OutputAsList().attach(engine)
    seen = []
    engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen.append(from_engine(["loss"], first=True)(e.state.output))
    )
    return engine, seen


def test_a_batch_dict_is_read_as_the_loss_tensor():
    loss = torch.tensor(0.25)
    batch_output = {"loss": loss, "pred": [torch.zeros(2, 3, 4, 4, 4)]}
    assert isinstance(from_engine(["loss"], first=True)(batch_output), tuple)  # the problem: a tuple, not the loss
    engine, seen = _engine(batch_output)
    engine.run([0, 1], max_epochs=1)
    assert len(seen) == 2 and all(s is loss for s in seen)
    assert engine.state.output == [batch_output]


def test_a_decollated_output_is_left_alone():
    decollated = [{"loss": torch.tensor(0.5)}, {"loss": torch.tensor(0.5)}]
    engine, seen = _engine(decollated)
    engine.run([0], max_epochs=1)
    assert engine.state.output is decollated and seen == [decollated[0]["loss"]]
