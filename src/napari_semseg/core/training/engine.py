"""The training engine: one loop for every kind of training.

:class:`Trainer` owns the steps, the learning-rate schedule, the budget (epochs and/or wall
clock), cancellation and the progress events (:class:`~.state.TrainProgress`); its state is one
typed :class:`~.state.LoopState`. What varies plugs in:

* a **task** (:class:`~.task.Task`, see :mod:`.task` for the protocol): what one step computes
  and its loss/metrics, which modules and optimizers it owns and checkpoints, what model it
  exports. Segmentation is :class:`~.tasks.segmentation.SegmentationTask`.
* **callbacks** (:class:`~.callbacks.base.Callback`): what happens around the steps --
  validation and the best model, early stopping, atomic checkpoints, the annotation feed,
  provenance, live previews, CPU thread tuning.

The loop::

    task.start(saved); restore optimizers/modules when resuming; callbacks.on_start
    yield the opening event (with loop.preview if a callback set one, e.g. a first answer)
    until the budget is spent (a new run makes at least one step), the run is cancelled or
    stopped early:
        callbacks.on_epoch_start; task.begin_epoch(epoch)
        steps_per_epoch times: callbacks.on_step_start; set learning rates from the schedule;
            task.step(loop); count; callbacks.on_step_end; yield a step event;
            stop after this step if should_stop() or the budget is spent
        epoch += 1; callbacks.on_epoch_end; append to history; callbacks.after_epoch
        yield the epoch's closing event (with loop.preview)
    model = loop.best_model if a callback left one that validated best, else
            task.export(best weights); callbacks.on_end(model); return model
    finally: callbacks.on_close; task.close()

To add a kind of training, write a task module under :mod:`.tasks` and a facade that builds the
task, picks callbacks, and returns ``Trainer(task, budget, callbacks, ...).run()``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

from .callbacks.base import Callback
from .checkpoint import LIVE, SavedState, restore_modules, restore_optimizers
from .state import Budget, LoopState, TrainProgress
from .task import Task

Schedule = Callable[[float, float], float]  # (fraction of the run, peak rate) -> rate


def one_cycle(fraction: float, peak: float, warmup: float = 0.1, start_div: float = 25.0,
              end_div: float = 1000.0) -> float:
    """One-cycle learning rate at ``fraction`` (0..1) of training: linear warm-up from
    ``peak / start_div`` to ``peak``, then cosine annealing to ``peak / end_div``."""
    f = min(max(fraction, 0.0), 1.0)
    if f < warmup:
        return peak / start_div + (peak - peak / start_div) * f / warmup
    t = (f - warmup) / max(1e-9, 1 - warmup)
    low = peak / end_div
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * t))


class Trainer:
    """Run a :class:`~.task.Task` under a :class:`~.state.Budget` with callbacks.

    Parameters
    ----------
    task
        What is trained.
    budget
        Epochs, steps per epoch and/or a time budget.
    callbacks
        Called in list order at every hook (see :mod:`.callbacks.base`).
    should_stop
        Polled after every step; True ends the run after closing the current epoch (the
        epoch is validated and checkpointed as usual).
    resume
        The saved state of a checkpoint (:func:`~.checkpoint.read_checkpoint_state`) to
        continue from: counters, best weights, history, optimizers and non-exported modules.
    schedule
        Learning rate from (fraction of the run, the rate each parameter group was created
        with); one-cycle by default.
    monitor
        The metric recorded in each history entry.
    """

    def __init__(self, task: Task, budget: Budget, callbacks: Sequence[Callback] = (), *,
                 should_stop: Callable[[], bool] | None = None, resume: SavedState | None = None,
                 schedule: Schedule = one_cycle, monitor: str = "score") -> None:
        self.task, self.budget, self.callbacks = task, budget, list(callbacks)
        self.should_stop, self.resume = should_stop, resume
        self.schedule, self.monitor = schedule, monitor
        self._peaks: dict[str, list[float]] = {}

    def run(self) -> Generator[TrainProgress, None, Any]:
        """Train; yield :class:`~.state.TrainProgress`; return the exported model."""
        loop = LoopState(self.budget)
        try:
            self._start(loop)
            yield self._opening_event(loop)
            while not self._finished(loop):
                self._call("on_epoch_start", loop)
                self.task.begin_epoch(loop.epoch)
                yield from self._steps(loop)
                yield self._close_epoch(loop)
            model = loop.best_model if loop.best_model is not None \
                else self.task.export(loop.best_weights)
            self._call("on_end", loop, model)
            return model
        finally:
            self._call("on_close", loop)
            self.task.close()

    # ------------------------------------------------------------------ phases

    def _start(self, loop: LoopState) -> None:
        saved = None
        if self.resume is not None:
            saved, tensors = self.resume
            loop.restore(saved, tensors)
        loop.say(self.task.start(saved))
        self._peaks = {name: [g["lr"] for g in opt.param_groups]
                       for name, opt in self.task.optimizers().items()}
        if self.resume is not None:
            restore_optimizers(self.task.optimizers(), *self.resume)
            restore_modules({**self.task.modules(), LIVE: self.task.model()}, tensors)
        loop.metrics = dict(loop.best_metrics)
        self._call("on_start", loop)

    def _finished(self, loop: LoopState) -> bool:
        """Whether the run is over; a new run always makes its first step and epoch, even when
        its time went to the start (a first answer), so that something is validated."""
        epochs = self.budget.epochs
        if loop.stop or (epochs is not None and loop.epoch >= epochs):
            return True
        elapsed = loop.elapsed()
        return loop.step > 0 and (loop.out_of_time(elapsed) or loop.next_step_overruns(elapsed))

    def _steps(self, loop: LoopState) -> Generator[TrainProgress, None, None]:
        loop.epoch_loss, loop.epoch_steps = 0.0, 0
        total = self.budget.total_steps
        for _ in range(self.budget.steps_per_epoch):
            started = loop.elapsed()
            event = self._step(loop)
            yield event
            loop.note_step_cost(loop.elapsed() - started)
            if self.should_stop is not None and self.should_stop():
                loop.stop = True
            if loop.stop:  # cancelled, or a callback ended the run (divergence)
                return
            elapsed = loop.elapsed()
            if loop.out_of_time(elapsed) or loop.next_step_overruns(elapsed) or (
                    total is not None and loop.step >= total):
                return

    def _step(self, loop: LoopState) -> TrainProgress:
        self._call("on_step_start", loop)
        started = time.perf_counter()
        self._set_learning_rates(loop.fraction())
        result = self.task.step(loop)
        loop.step_seconds = time.perf_counter() - started
        loop.step += 1
        loop.session_steps += 1
        loop.samples += result.samples
        loop.epoch_loss += result.loss
        loop.epoch_steps += 1
        self._call("on_step_end", loop)
        metrics = {**loop.metrics, **result.metrics} if result.metrics else loop.metrics
        elapsed = loop.elapsed()
        return self._event(loop, loop.loss, elapsed, loop.eta(elapsed), metrics=metrics)

    def _close_epoch(self, loop: LoopState) -> TrainProgress:
        started = loop.elapsed()
        loop.epoch += 1
        loop.notes = [f"epoch {loop.epoch}: loss {loop.loss:.4f}"]
        self._call("on_epoch_end", loop)
        loop.history.append({"epoch": loop.epoch, "step": loop.step, "loss": loop.loss,
                             self.monitor: loop.metrics.get(self.monitor),
                             "elapsed": loop.elapsed()})
        self._call("after_epoch", loop)
        elapsed = loop.elapsed()
        loop.epoch_end_cost = elapsed - started
        event = self._event(loop, loop.loss, elapsed, loop.eta(elapsed), epoch_end=True,
                            message="".join(loop.notes))
        loop.preview = None
        return event

    # ------------------------------------------------------------------ helpers

    def _opening_event(self, loop: LoopState) -> TrainProgress:
        """The first event; it carries the model a callback prepared at the start (a first
        answer), if any."""
        event = self._event(loop, math.nan, loop.elapsed(), None)
        event.model, loop.preview = loop.preview, None
        return event

    def _set_learning_rates(self, fraction: float) -> None:
        for name, optimizer in self.task.optimizers().items():
            peaks = self._peaks.get(name, [])
            for i, group in enumerate(optimizer.param_groups):
                if i < len(peaks):
                    group["lr"] = self.schedule(fraction, peaks[i])

    def _event(self, loop: LoopState, loss: float, elapsed: float, eta: float | None, *,
               epoch_end: bool = False, metrics: dict[str, float] | None = None,
               message: str | None = None) -> TrainProgress:
        return TrainProgress(loop.step, self.budget.total_steps, loop.epoch, loss,
                             loop.metrics if metrics is None else metrics, loop.best, elapsed,
                             eta, epoch_end, loop.preview if epoch_end else None,
                             loop.take_message() if message is None else message)

    def _call(self, hook: str, loop: LoopState, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(loop, self.task, *args)
