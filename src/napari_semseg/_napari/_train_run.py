"""The job controller of the Train widget: one training at a time, in a napari thread worker.

:meth:`TrainingRun.start` runs :func:`napari_semseg.core.train.iter_train` on a checked
:class:`~napari_semseg._napari._plans.TrainPlan`; its events go to the progress display and the
models of finished epochs to the live preview; strokes painted meanwhile reach the trainer
through the stroke feed. The model that comes out is kept (``model``, for Continue and Save) and
offered to the Segment widget of the same viewer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..core.model_health import training_warnings
from ._jobs import Job, Outcome
from ._plans import TrainPlan
from ._preview import LivePreview
from ._registry import trained_models
from ._strokes import StrokeFeed
from ._train_progress import TrainProgress


class TrainingRun:
    """Starts and stops training jobs and keeps the last trained model.

    Parameters
    ----------
    viewer
        The napari viewer (its trained-model registry receives each model).
    progress, strokes, preview
        Where progress is shown, how new strokes reach the trainer, where models are previewed.
    finished
        Called on the main thread when a job has ended (after its outcome was handled).
    """

    def __init__(self, viewer: Any, progress: TrainProgress, strokes: StrokeFeed,
                 preview: LivePreview, finished: Callable[[], None],
                 name: Callable[[], str] | None = None) -> None:
        self.viewer = viewer
        self._name = name  # the name the user typed for the next model ("" = automatic)
        self.progress, self.strokes, self.preview = progress, strokes, preview
        self._finished = finished
        self.job: Job | None = None
        self.model: Any = None  # the last trained model
        self.model_name: str | None = None
        self._started = 0.0

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def start(self, plan: TrainPlan, continued: bool = False) -> Job:
        """Train on ``plan`` (``continued``: the plot goes on from the last run's steps)."""
        from ..core.train import iter_train

        feed = self.strokes.start(plan.annotations_layer)

        def job(should_stop: Callable[[], bool]) -> Any:
            base = plan.loader()  # a copy is trained: models in the viewer stay as they are
            return (yield from iter_train(
                plan.source, plan.annotations, plan.settings, model=base,
                class_names=plan.class_names, class_colors=plan.class_colors,
                feed=feed, should_stop=should_stop))

        self.progress.begin(plan.settings.time_budget, continued)
        self.preview.begin(plan.image, plan.source, plan.settings.device,
                           below=plan.annotations_layer)
        self._started = time.perf_counter()
        self.job = Job(job, self._on_event, self._on_done).start()
        return self.job

    def stop(self) -> bool:
        """Ask the running job to stop after its current step; False if none runs."""
        if not self.running:
            return False
        self.job.stop()
        return True

    def shutdown(self) -> None:
        """Stop the running job and wait for it; its outcome is handled before this returns."""
        if self.job is not None:
            self.job.shutdown()

    def _on_event(self, event: Any) -> None:
        self.progress.show(event)
        if event.model is not None:  # an epoch's best model, or the first answer at the start
            self.preview.offer(event.model)

    def _on_done(self, outcome: Outcome) -> None:
        self.strokes.stop()
        trained = outcome.ok and outcome.result is not None
        self.progress.end(trained)
        if trained:
            self._keep(outcome.result, time.perf_counter() - self._started)
        elif outcome.cancelled:
            self.progress.status.info("stopped before a model was ready")
        else:
            self.progress.status.error(outcome.error or "training failed")
        self._finished()

    def _new_name(self, meta: Any) -> str:
        """The typed name (made unique with the time if taken), else architecture and time."""
        stamp = time.strftime("%H:%M:%S")
        typed = (self._name() if self._name is not None else "").strip()
        if not typed:
            return f"{meta.arch}/{meta.encoder} {stamp}"
        return f"{typed} {stamp}" if typed in trained_models(self.viewer) else typed

    def _keep(self, model: Any, seconds: float) -> None:
        """Keep the trained model, offer it to the Segment widget and preview it."""
        self.model = model
        meta = model.metadata
        self.model_name = self._new_name(meta)
        trained_models(self.viewer).add(self.model_name, model)
        record = meta.training if isinstance(meta.training, dict) else {}
        best = (record.get("best_metrics") or {}).get("mean_iou", record.get("best"))
        note = f", best val mIoU {best:.3f}" if isinstance(best, (int, float)) else ""
        text = (f"trained in {seconds:.1f} s{note}: '{self.model_name}' is ready in the "
                "Segment widget; Save model… to keep it")
        warnings = training_warnings(record, list(meta.class_names))
        if warnings:  # a model that predicts one class must not look fine
            self.progress.status.warning(f"{text}. Warning: {' '.join(warnings)}")
        else:
            self.progress.status.info(text)
        self.preview.offer(model, force=True)
