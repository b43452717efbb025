"""The typed state of a training loop, its budget, and the progress events it yields.

Data only (no torch import): the :class:`~.engine.Trainer` owns one :class:`LoopState` per
run, and tasks and callbacks read and update it instead of sharing closures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainProgress:
    """One event of a training run (one per optimizer step, plus one closing each epoch)."""

    step: int
    total_steps: int | None
    epoch: int
    loss: float
    metrics: dict[str, float]
    best: float | None
    elapsed: float
    eta: float | None
    epoch_end: bool
    model: Any | None
    message: str = ""


@dataclass
class Budget:
    """How long a run lasts: whichever of ``epochs`` and ``time_budget`` (seconds) ends first.

    Attributes
    ----------
    epochs
        Number of epochs, or None for no bound by epochs (then ``time_budget`` is needed).
    steps_per_epoch
        Optimizer steps per epoch; epochs end with validation, checkpoints and new annotations.
    time_budget
        Wall-clock budget in seconds over all sessions of the run (resumed runs included).
    """

    epochs: int | None
    steps_per_epoch: int
    time_budget: float | None = None

    @property
    def total_steps(self) -> int | None:
        """Steps of the whole run when bounded by epochs, else None."""
        return self.epochs * self.steps_per_epoch if self.epochs is not None else None


@dataclass
class LoopState:
    """Everything the training loop knows, read and updated by the trainer, tasks and callbacks.

    Counters (``epoch``, ``step``, ``elapsed_before``), the best score and weights and the
    history survive a resume (see :meth:`record` and :meth:`restore`); the rest belongs to the
    current session.
    """

    budget: Budget
    epoch: int = 0
    step: int = 0
    elapsed_before: float = 0.0  # seconds spent in earlier sessions of a resumed run
    session_start: float = field(default_factory=lambda: time.perf_counter())
    session_steps: int = 0
    samples: int = 0  # samples (patches) seen in this session
    epoch_loss: float = 0.0  # sum of the step losses of the current epoch
    epoch_steps: int = 0
    step_seconds: float = 0.0  # duration of the last step (task.step only)
    step_cost: float = 0.0  # smoothed seconds per step, callbacks and consumer included
    epoch_end_cost: float = 0.0  # seconds the last epoch's close (validation...) took
    metrics: dict[str, float] = field(default_factory=dict)  # latest validation metrics
    best: float | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    best_weights: dict[str, Any] | None = None  # CPU state dict of the best exported model
    verdict: str | None = None  # this epoch's validation: "better", "same", "worse" or None
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # facts callbacks publish (saved too)
    stop: bool = False  # cancelled or stopped early: the run ends after this epoch
    message: str = ""  # sent with the next event
    notes: list[str] = field(default_factory=list)  # pieces of the epoch's closing message
    preview: Any = None  # model sent with the epoch's closing event (or the opening one)
    # a ready model that validates better than the task's best weights (e.g. the first
    # answer); the run returns it instead of exporting the task's model
    best_model: Any = None

    def elapsed(self) -> float:
        """Seconds of training over all sessions."""
        return self.elapsed_before + time.perf_counter() - self.session_start

    @property
    def loss(self) -> float:
        """Mean step loss of the current epoch."""
        return self.epoch_loss / max(1, self.epoch_steps)

    def fraction(self) -> float:
        """How far the run is (0..1) by steps or by time, whichever is further."""
        f = 0.0
        total = self.budget.total_steps
        if total:
            f = max(f, self.step / total)
        if self.budget.time_budget:
            f = max(f, self.elapsed() / self.budget.time_budget)
        return f

    def eta(self, elapsed: float) -> float | None:
        """Seconds left at ``elapsed``: by the step rate of this session and/or the budget."""
        candidates = []
        total = self.budget.total_steps
        if total is not None and self.session_steps:
            rate = (elapsed - self.elapsed_before) / self.session_steps
            candidates.append(rate * max(0, total - self.step))
        if self.budget.time_budget is not None:
            candidates.append(max(0.0, self.budget.time_budget - elapsed))
        return min(candidates) if candidates else None

    def out_of_time(self, elapsed: float | None = None) -> bool:
        """Whether the time budget is spent (at ``elapsed``, default now)."""
        limit = self.budget.time_budget
        return limit is not None and (self.elapsed() if elapsed is None else elapsed) >= limit

    def next_step_overruns(self, elapsed: float) -> bool:
        """Whether one more step, then closing the epoch, would end the run further past the
        time budget than stopping now ends it short of it (never before the first step)."""
        limit = self.budget.time_budget
        if limit is None or self.step == 0 or self.step_cost <= 0:
            return False
        return elapsed + self.step_cost + self.epoch_end_cost > limit + 0.5 * self.step_cost

    def note_step_cost(self, seconds: float) -> None:
        """Smooth the measured cost of one step into :attr:`step_cost`."""
        self.step_cost = seconds if self.step_cost <= 0 else 0.5 * (self.step_cost + seconds)

    def say(self, text: str) -> None:
        """Add ``text`` to the message of the next event."""
        self.message = f"{self.message}; {text}" if self.message else text

    def take_message(self) -> str:
        """The pending message, cleared."""
        message, self.message = self.message, ""
        return message

    def record(self) -> dict[str, Any]:
        """The JSON-able state saved in checkpoints and read for the provenance."""
        return {"epoch": self.epoch, "step": self.step, "elapsed": self.elapsed(),
                "best": self.best, "best_metrics": self.best_metrics,
                "best_epoch": self.best_epoch, "history": self.history, **self.info}

    def restore(self, saved: dict[str, Any], tensors: dict[str, Any]) -> None:
        """Continue from a :meth:`record` and the ``best/`` tensors of a checkpoint."""
        self.epoch, self.step = int(saved.get("epoch", 0)), int(saved.get("step", 0))
        self.elapsed_before = float(saved.get("elapsed", 0.0))
        self.best = saved.get("best")
        self.best_metrics = saved.get("best_metrics", {})
        self.best_epoch = int(saved.get("best_epoch", 0))
        self.history = saved.get("history", [])
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best/")}
        self.best_weights = best or None
