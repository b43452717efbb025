"""Validation with the best model kept, and early stopping."""

from __future__ import annotations

from ..state import LoopState
from ..task import Task
from .base import Callback


class Validation(Callback):
    """Validate after every epoch and keep the best weights of the exported model.

    Parameters
    ----------
    monitor
        The metric (a key of what ``task.validate()`` returns) that decides which is best.
    label
        How the epoch's closing message names it.
    higher_is_better
        False for errors and distances.

    A tie counts as best (the later weights are kept). When the task has nothing to validate
    on, the last weights are the ones exported (``loop.best_weights`` is cleared).
    """

    def __init__(self, monitor: str, label: str | None = None,
                 higher_is_better: bool = True) -> None:
        self.monitor, self.label = monitor, label or monitor
        self.higher_is_better = higher_is_better

    def on_epoch_end(self, loop: LoopState, task: Task) -> None:
        loop.verdict = None
        if loop.info.get("diverged_at"):  # the best so far stays (see DivergenceGuard)
            return
        metrics = task.validate()
        if metrics is None:
            loop.best_weights = None
            return
        loop.metrics = metrics
        score = metrics[self.monitor]
        loop.verdict = self._compare(score, loop.best)
        if loop.verdict != "worse":
            loop.best, loop.best_metrics, loop.best_epoch = score, dict(metrics), loop.epoch
            loop.best_model = None  # the task's weights are now the best
            loop.best_weights = {k: v.detach().cpu().clone()
                                 for k, v in task.model().state_dict().items()}
        loop.notes.append(f", validation {self.label} {score:.3f}")

    def _compare(self, score: float, best: float | None) -> str:
        if best is None:
            return "better"
        if score == best:
            return "same"
        return "better" if (score > best) == self.higher_is_better else "worse"


class EarlyStopping(Callback):
    """Stop after ``patience`` validated epochs without improvement (ties neither count nor
    reset). Place it after :class:`Validation`."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.waited = 0

    def on_epoch_end(self, loop: LoopState, task: Task) -> None:
        if loop.verdict is None:
            return
        if loop.verdict == "better":
            self.waited = 0
        elif loop.verdict == "worse":
            self.waited += 1
        if self.waited >= self.patience:
            loop.stop = True
            loop.notes.append(f"; early stop after {self.waited} epochs without improvement")
