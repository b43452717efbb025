"""Atomic checkpoints after every epoch; the finished model replaces the last one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint import state_path, write_checkpoint
from ..state import LoopState
from ..task import Task
from .base import Callback


class Checkpoint(Callback):
    """Write a checkpoint (model file + ``.state``, see :mod:`..checkpoint`) after each epoch.

    At the end of the run the returned model is written to ``path`` and the ``.state`` file is
    removed (nothing is left to resume). Place it after :class:`~.provenance.Provenance`, so
    that the files carry the training record.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_start(self, loop: LoopState, task: Task) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def after_epoch(self, loop: LoopState, task: Task) -> None:
        write_checkpoint(self.path, task, loop)

    def on_end(self, loop: LoopState, task: Task, model: Any) -> None:
        task.save(model, self.path)
        state_path(self.path).unlink(missing_ok=True)
