"""A batch-level engine output in the form the decollated one has, for MONAI's logging handlers."""

from __future__ import annotations

from ignite.engine import Engine, Events

__all__ = ["OutputAsList"]


class OutputAsList:
    """Wrap an engine's batch-level output (one dict) in a one-element list after every iteration.

    An engine built with ``decollate=False`` (the CoTr and SCAA trainers: their predictions are lists of
    deep-supervision or slice outputs, which MONAI cannot decollate) leaves ``engine.state.output`` as one dict for
    the whole batch. The output transform of MONAI's logging handlers, ``from_engine(["loss"], first=True)``, returns
    a one-element tuple for a dict and the loss itself only for a list of dicts; the handlers that ``monai.bundle run
    --tracking mlflow`` adds use that transform and cannot be configured from the bundle. With this handler first in
    the engine's handler list, ``engine.state.output`` is ``[output]`` for every handler after it, as a decollated
    output would be, so ``from_engine(["loss"], first=True)`` gives the loss tensor. The dict itself, with its
    batch dimension, is unchanged. An output that is already a list (a decollated engine) is left alone.

    Attach it before the handlers that read the output (``train#handlers`` attaches in list order).
    """

    def attach(self, engine: Engine) -> None:
        """Register the wrapping on ``Events.ITERATION_COMPLETED`` of ``engine``."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Replace a dict ``engine.state.output`` by ``[engine.state.output]``."""
        if isinstance(engine.state.output, dict):
            engine.state.output = [engine.state.output]
