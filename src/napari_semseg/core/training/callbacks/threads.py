"""CPU thread count chosen by measuring step times (see :mod:`napari_semseg.core.threads`)."""

from __future__ import annotations

from typing import Any

from ...threads import ThreadTuner
from ..state import LoopState
from ..task import Task
from .base import Callback


class ThreadTuning(Callback):
    """Run a :class:`~napari_semseg.core.threads.ThreadTuner` around the steps of a CPU run.

    Parameters
    ----------
    tune
        Measure and pick the faster of torch's thread count and one thread (only where
        reproducibility does not depend on it: runs bounded by a time budget).
    threads
        A fixed thread count for the run (then nothing is tuned).

    The threads in use are published as ``loop.info["threads"]`` (saved with checkpoints, in
    the record as ``cpu_threads``); torch's thread count is restored when the run ends. Place
    it first so that its note precedes the others in the epoch's closing message.
    """

    def __init__(self, tune: bool, threads: int | None = None) -> None:
        self.tune, self.threads = tune, threads
        self.tuner: ThreadTuner | None = None

    @property
    def _tuner(self) -> ThreadTuner:
        if self.tuner is None:
            raise RuntimeError("the thread tuner is made in on_start, called before any step")
        return self.tuner

    def on_start(self, loop: LoopState, task: Task) -> None:
        self.tuner = ThreadTuner(self.tune, self.threads)
        loop.info["threads"] = self.tuner.describe()

    def on_step_start(self, loop: LoopState, task: Task) -> None:
        self._tuner.before_step()

    def on_step_end(self, loop: LoopState, task: Task) -> None:
        self._tuner.after_step(loop.step_seconds)

    def on_epoch_end(self, loop: LoopState, task: Task) -> None:
        loop.info["threads"] = self._tuner.describe()
        if self._tuner.enabled:
            loop.notes.append(f" [{loop.info['threads']}]")

    def on_end(self, loop: LoopState, task: Task, model: Any) -> None:
        loop.info["threads"] = self._tuner.describe()

    def on_close(self, loop: LoopState, task: Task) -> None:
        if self.tuner is not None:
            self.tuner.restore()
