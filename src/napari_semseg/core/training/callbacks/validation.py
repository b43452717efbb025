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
    settle
        Fraction of the run (0..1) before which an epoch is only *provisionally* best: it can
        beat other early epochs but never a model a callback offered (``loop.best_model``, the
        first answer), and the first epoch from ``settle`` on replaces it whatever its score.
        With a small validation split the best of many noisy early scores is often luck (the
        scribble benchmark's runs whose best epoch came in the first half of a one-cycle run
        scored 0.02-0.25 lower on held-out images), while one-cycle gives its best weights late.

    A tie counts as best (the later weights are kept). When the task has nothing to validate
    on, the last weights are the ones exported (``loop.best_weights`` is cleared).
    """

    def __init__(self, monitor: str, label: str | None = None,
                 higher_is_better: bool = True, settle: float = 0.0) -> None:
        self.monitor, self.label = monitor, label or monitor
        self.higher_is_better, self.settle = higher_is_better, settle
        self.provisional = False  # the best so far is an early epoch of the task's own weights

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
        early = loop.fraction() < self.settle
        loop.verdict = self._verdict(score, loop, early)
        if loop.verdict != "worse":
            self.provisional = early
            loop.best, loop.best_metrics, loop.best_epoch = score, dict(metrics), loop.epoch
            loop.best_model = None  # the task's weights are now the best
            loop.best_weights = {k: v.detach().cpu().clone()
                                 for k, v in task.model().state_dict().items()}
        loop.notes.append(f", validation {self.label} {score:.3f}")

    def _verdict(self, score: float, loop: LoopState, early: bool) -> str:
        """How this epoch's ``score`` compares with the best so far, by the ``settle`` rule."""
        offered = loop.best_model is not None  # a callback's model is the best
        if early and offered:
            return "worse"
        if not early and self.provisional and not offered:
            return "better"
        return self._compare(score, loop.best)

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
