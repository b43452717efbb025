"""Stop a run that diverged (a NaN or infinite loss or weight) and never export its weights.

Placed before :class:`~.validation.Validation`. When the loss of a step or a weight at the end
of an epoch is not finite, the run stops: the task's model goes back to the best weights
validated so far (and the optimizers forget their state), so the epoch closes, validates,
checkpoints and returns the last good model with a message saying what happened and what to
change. Diverging before any epoch was validated raises a one-line
:class:`~napari_semseg.core.errors.SemSegError`: there is no good model to keep.
"""

from __future__ import annotations

import math

import torch

from ...errors import SemSegError
from ..state import LoopState
from ..task import Task
from .base import Callback

ADVICE = "lower the learning rate (learning_rate, --learning-rate)"


def weights_finite(module: torch.nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``module`` is finite."""
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values()
               if t.is_floating_point())


class DivergenceGuard(Callback):
    """End a diverged run with the last good model (see the module's description)."""

    def on_step_end(self, loop: LoopState, task: Task) -> None:
        if not loop.info.get("diverged_at") and not math.isfinite(loop.epoch_loss):
            self._diverged(loop, task, "the loss is not a number")

    def on_epoch_end(self, loop: LoopState, task: Task) -> None:
        if not loop.info.get("diverged_at") and not weights_finite(task.model()):
            self._diverged(loop, task, "weights are not finite")

    @staticmethod
    def _diverged(loop: LoopState, task: Task, what: str) -> None:
        if loop.best_weights is None and loop.best_model is None:
            raise SemSegError(f"training diverged at step {loop.step} ({what}) before any "
                              f"model was validated; nothing was saved: {ADVICE}")
        if loop.best_weights is not None:
            task.model().load_state_dict(loop.best_weights)
        for optimizer in task.optimizers().values():
            optimizer.state.clear()
        loop.stop = True
        loop.info["diverged_at"] = loop.step
        loop.say(f"training diverged at step {loop.step} ({what}): stopped and kept the "
                 f"model of epoch {loop.best_epoch}; {ADVICE} to train further")
