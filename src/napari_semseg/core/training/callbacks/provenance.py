"""The training record (provenance) stored in the exported model's metadata."""

from __future__ import annotations

import json
import time
from typing import Any

from ..state import LoopState
from ..task import Task
from .base import Callback

HISTORY_KEPT = 200  # epochs of history kept in the record


def training_record(loop: LoopState, task: Task, finished: bool) -> dict[str, Any]:
    """The task's facts plus the loop's counters, best metrics, history and throughput."""
    session = time.perf_counter() - loop.session_start
    out = {
        **task.provenance(),
        "epochs": loop.epoch,
        "steps": loop.step,
        "best_epoch": loop.best_epoch,
        "best_metrics": loop.best_metrics,
        "history": loop.history[-HISTORY_KEPT:],
        "time_s": round(loop.elapsed(), 2),
        "cpu_threads": loop.info.get("threads"),
        "patches_per_s": round(loop.samples / session, 3) if session > 0 else None,
        "finished": finished,
    }
    if "first_answer" in loop.info:  # the run fitted a first answer: say which model won
        out["first_answer"] = loop.info["first_answer"]
        out["returned"] = "first answer" if loop.best_model is not None else "cnn"
    return json.loads(json.dumps(out, default=str))


class Provenance(Callback):
    """Record how the model was trained: in the live model after every epoch (so checkpoints
    and previews carry it) and, marked finished, in the model the run returns."""

    def after_epoch(self, loop: LoopState, task: Task) -> None:
        task.set_training_record(task.model(), training_record(loop, task, finished=False))

    def on_end(self, loop: LoopState, task: Task, model: Any) -> None:
        task.set_training_record(model, training_record(loop, task, finished=True))
