"""Live preview: each epoch's closing event carries a copy of the best model so far."""

from __future__ import annotations

from ..state import LoopState
from ..task import Task
from .base import Callback


class Preview(Callback):
    """Attach an independent CPU copy of the best model (the last one without validation) to
    the epoch's closing event; a better model a callback holds (``loop.best_model``, e.g. the
    first answer) is sent as it is. Place it after :class:`~.provenance.Provenance`."""

    def after_epoch(self, loop: LoopState, task: Task) -> None:
        loop.preview = loop.best_model if loop.best_model is not None \
            else task.export(loop.best_weights)
