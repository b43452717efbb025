"""The callback interface: what happens around the training steps.

A callback overrides some of the hooks below; the trainer calls each hook on every callback in
list order, always with the :class:`~..state.LoopState` and the task. Callbacks communicate
through the loop state: they set ``loop.metrics``, ``loop.best*``, ``loop.stop``, add to the
next event's message (``loop.say``), the epoch's closing message (``loop.notes``) or the saved
facts (``loop.info``), and set ``loop.preview``. Order matters at the end of an epoch:
callbacks that measure (validation) come before those that decide (early stopping), and those
that persist (provenance, then checkpoint, then preview) use :meth:`Callback.after_epoch`, which
runs after the trainer has added the epoch to ``loop.history``.
"""

from __future__ import annotations

from typing import Any

from ..state import LoopState
from ..task import Task


class Callback:
    """Base class of callbacks: every hook does nothing."""

    def on_start(self, loop: LoopState, task: Task) -> None:
        """After the task started (and the checkpoint was restored), before the first event."""

    def on_epoch_start(self, loop: LoopState, task: Task) -> None:
        """Before the task's ``begin_epoch``."""

    def on_step_start(self, loop: LoopState, task: Task) -> None:
        """Before each step (before its learning rates are set and its clock starts)."""

    def on_step_end(self, loop: LoopState, task: Task) -> None:
        """After each step has been counted (``loop.step_seconds`` holds its duration)."""

    def on_epoch_end(self, loop: LoopState, task: Task) -> None:
        """After an epoch's last step (``loop.epoch`` already counts it): measure and decide."""

    def after_epoch(self, loop: LoopState, task: Task) -> None:
        """After ``on_epoch_end`` of every callback and the history entry: persist, publish."""

    def on_end(self, loop: LoopState, task: Task, model: Any) -> None:
        """With the exported model the run is about to return."""

    def on_close(self, loop: LoopState, task: Task) -> None:
        """Always, when the run ends, is cancelled, closed or fails."""
