"""How a training job shows its progress: progress bar, live loss/IoU plot, status line and an
entry in napari's activity dock. Steps continue across Continue, so the plot goes on.
"""

from __future__ import annotations

import math
from typing import Any

from qtpy.QtWidgets import QProgressBar

from ._fields import StatusLine
from ._plot import LivePlot

BUDGET_TICKS = 1000  # resolution of the progress bar when the job is bounded by time


class TrainProgress:
    """The progress widgets of the Train widget (``bar``, ``plot``) and their updates."""

    def __init__(self, status: StatusLine) -> None:
        self.status = status
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.plot = LivePlot()
        self._activity: Any = None  # napari's progress in the activity dock
        self._budget: float | None = None
        self._offset = 0  # steps of the earlier runs shown in the plot (Continue)
        self._last_step = 0

    def begin(self, budget: float | None, continued: bool) -> None:
        """A training starts: a new plot, or the same one going on (``continued``)."""
        from napari.utils import progress

        if continued:
            self._offset = self._last_step
        else:
            self.plot.clear()
            self._offset = 0
        self._budget = budget
        self.status.info("starting…" + (f" (budget {budget:.0f} s)" if budget else ""))
        self._activity = progress(total=0, desc="napari-semseg: train")

    def show(self, event: Any) -> None:
        """One progress event of the trainer (a step, or the end of an epoch)."""
        step = self._offset + int(event.step)
        self._last_step = step
        if not event.epoch_end:  # the epoch summary repeats the running loss
            self.plot.add_loss(step, event.loss)
        miou = event.metrics.get("mean_iou") if event.metrics else None
        if event.epoch_end and miou is not None:
            self.plot.add_iou(step, miou)
        self._show_bar(event)
        parts = [f"epoch {event.epoch}", f"step {event.step}"]
        if event.loss is not None and math.isfinite(event.loss):  # no "loss nan" before a step
            parts.append(f"loss {event.loss:.3f}")
        best = self.plot.best_iou()
        if miou is not None and best is not None:
            parts.append(f"val mIoU {miou:.3f} (best {best:.3f}, kept)")
        if event.eta is not None:
            parts.append(f"ETA {event.eta:.0f} s")
        self.status.info(" · ".join(parts))
        self._show_activity(event, parts[0])

    def _show_bar(self, event: Any) -> None:
        total = event.total_steps
        if total:
            self.bar.setRange(0, int(total))
            self.bar.setValue(int(event.step))
        elif self._budget:
            self.bar.setRange(0, BUDGET_TICKS)
            self.bar.setValue(int(min(1.0, event.elapsed / self._budget) * BUDGET_TICKS))

    def _show_activity(self, event: Any, epoch: str) -> None:
        if self._activity is None:
            return
        total = event.total_steps
        if total and self._activity.total != total:
            self._activity.total = int(total)
        if total:
            self._activity.update(max(0, int(event.step) - self._activity.n))
        self._activity.set_description(f"napari-semseg: train · {epoch}")

    def end(self, trained: bool) -> None:
        """The job ended: a full bar if a model came out, else an empty one."""
        if self._activity is not None:
            self._activity.close()
            self._activity = None
        self.bar.setValue(self.bar.maximum() if trained else 0)
