"""The instant first answer: a feature-head model fitted before the CNN's first step.

A :class:`~napari_semseg.core.first_answer.net.FeatureHeadNet` (frozen MobileNetV2 features and
a light per-pixel head, :mod:`napari_semseg.core.first_answer`) is fitted in seconds on the
painted pixels of the training blocks; the run's opening event carries it as a preview, so a
viewer shows a first segmentation while the CNN starts. It is validated on the same held-out
blocks as the CNN and competes with it: the run returns whichever validates better
(``loop.best_model``), so a short ``time_budget`` still returns a usable model.

After the first epoch, stronger candidates are fitted with a larger share of the budget: the
same head on all sampled pixels when the quick fit ran out of time, and one on deeper taps
(more context: it wins on buildings and roads, loses on thin membranes). Each is validated
on the held-out blocks and the best one stays in the competition (see
``benchmarks/results/scribbles.md`` for what each wins where). Once every candidate is
validated, the best head (if a head is best) is refitted with the same settings on *all*
painted pixels, validation blocks included: the model the run returns when that head still
validates best at the end (its recorded score is the held-out one of the head it refits).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

from ...first_answer.fit import FeatureHeadSettings, iter_fit_feature_head
from ...io import ImageSource
from ...metrics import scores
from ...pretrained import list_starts
from ..data import estimate_training_normalization
from ..state import LoopState
from .base import Callback

ENCODER = "mobilenet_v2"
FALLBACK_START = "mobilenet_v2-imagenet"
SHARE = 0.25  # at most this share of a time budget goes to the quick first answer
MAX_SECONDS = 8.0  # and at most this many seconds
SHORT_BUDGET = 30.0  # below this many seconds the CNN gets too few steps to matter, so
SHORT_SHARE = 0.7  # the first answer takes this share instead, and no candidate is fitted
DEEP_TAPS = (0, 1, 3, 6, 10, 13)  # MobileNetV2 blocks down to stride 16
CANDIDATE_SHARE = 0.1  # each stronger candidate gets at most this share of the budget
MAX_CANDIDATE_SECONDS = 30.0  # and at most this many seconds


def quick_budget(time_budget: float | None) -> float | None:
    """Seconds for the quick first answer of a run with ``time_budget`` (None: no limit)."""
    if time_budget is None:
        return None
    share = SHORT_SHARE if time_budget < SHORT_BUDGET else SHARE
    return min(MAX_SECONDS, max(1.0, share * time_budget))


def is_short(time_budget: float | None) -> bool:
    """Whether a run's budget is too short for the CNN to matter (no candidates, no refit, and
    the CNN never displaces the first answer)."""
    return time_budget is not None and time_budget < SHORT_BUDGET


def candidate_cap(time_budget: float | None) -> float | None:
    """Seconds each stronger candidate (and the refit) may take: None without a budget."""
    return None if time_budget is None else \
        min(MAX_CANDIDATE_SECONDS, CANDIDATE_SHARE * time_budget)


def candidates(time_budget: float | None, quick_complete: bool) -> dict[str, dict[str, Any]]:
    """The stronger feature heads to fit after the first epoch: ``{name: fit options}``.

    ``quick_complete`` says whether the quick fit used every sampled pixel (then refitting the
    same head with more time would give the same head).
    """
    if is_short(time_budget):
        return {}
    cap = candidate_cap(time_budget)
    out: dict[str, dict[str, Any]] = {}
    if not quick_complete:
        out["shallow"] = {"time_budget": cap}
    out["deep"] = {"time_budget": cap, "taps": DEEP_TAPS}
    return out


@dataclass
class HeldOutLabels(ImageSource):
    """Annotations of image ``image`` with the pixels of the validation blocks read as 0."""

    image: int = 0
    block: int = 128
    held_out: frozenset = field(default_factory=frozenset)  # {(plane, block row, block col)}

    def read(self, plane: int, rows: slice, cols: slice) -> np.ndarray:
        out = np.array(super().read(plane, rows, cols), copy=True)
        b = self.block
        for p, by, bx in self.held_out:
            if p != plane:
                continue
            y0, y1 = max(by * b, rows.start) - rows.start, min((by + 1) * b, rows.stop) - rows.start
            x0, x1 = max(bx * b, cols.start) - cols.start, min((bx + 1) * b, cols.stop) - cols.start
            if y1 > y0 and x1 > x0:
                out[:, y0:y1, x0:x1] = 0
        return out


def training_labels(task: Any) -> list[ImageSource]:
    """The task's annotations without its validation blocks (the first answer must not see
    them, or its validation would flatter it)."""
    block = task.data.index.block
    out: list[ImageSource] = []
    for i, ann in enumerate(task.data.annotations):
        held = frozenset((p, by, bx) for j, p, by, bx in task.val_blocks if j == i)
        out.append(HeldOutLabels(ann.data, ann.channel_axis, ann.path, ann.geo_tags,
                                 image=i, block=block, held_out=held))
    return out


def encoder_state(start: dict[str, Any] | None) -> dict[str, Any]:
    """MobileNetV2 weights for the feature head: the CNN's own start when it is a MobileNetV2
    start, else the bundled ImageNet start."""
    from safetensors.torch import load_file

    path = None
    if start and start.get("encoder") == ENCODER and start.get("kind") in ("bundled", "file"):
        bundled = {s.path.name: s.path for s in list_starts()}
        path = bundled.get(start.get("file", "")) if start.get("kind") == "bundled" else \
            Path(start["name"])
    if path is None or not Path(path).exists():
        path = next(s.path for s in list_starts() if s.name == FALLBACK_START)
    tensors = load_file(str(path), device="cpu")
    return {k.removeprefix("encoder."): v.float() for k, v in tensors.items()}


class Stopwatch:
    """A clock that runs only while it is started: a candidate's time budget counts its own
    work, not the CNN steps it is interleaved with."""

    def __init__(self) -> None:
        self.total: float = 0.0
        self.since: float | None = None

    def __call__(self) -> float:
        return self.total + (time.perf_counter() - self.since if self.since is not None else 0)

    def __enter__(self) -> Stopwatch:
        self.since = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.total, self.since = self(), None


class FirstAnswer(Callback):
    """Fit the first answer at the start of a run; offer it as preview and as best model.

    Parameters
    ----------
    time_budget
        The run's time budget (the first answer takes at most :data:`SHARE` of it), or None.
    seed
        Seed of the pixel sample and the head.

    It validates the first answer at the end of the first epoch (place it before
    :class:`~.validation.Validation`, which then compares the CNN with it); the task must be a
    segmentation task (``data``, ``net``, ``val_blocks``, ``val_eval``,
    ``device``). From the first step on, the stronger :func:`candidates` are fitted one
    feature window per CNN step (so a cancel is seen within a step) and each competes once
    fitted.
    """

    def __init__(self, time_budget: float | None, seed: int = 0) -> None:
        self.time_budget, self.seed = time_budget, seed
        self.model: Any = None
        self.fit_s = 0.0
        self.validated = False
        self.plan: list[tuple[str, dict[str, Any]]] = []  # candidates still to fit
        self.job: Any = None  # the candidate being fitted, its name and its stopwatch
        self.name, self.watch = "", Stopwatch()
        self.plan_options: dict[str, Any] = {}
        self.inputs: tuple[Any, dict[str, Any]] | None = None  # normalization, encoder weights
        self.heads: dict[str, tuple[Any, dict[str, Any]]] = {}  # name -> (model, fit options)
        self.refit: tuple[Any, Any] | None = None  # (head refitted, its refit) once fitted
        self.refitting: Any = None  # the head being refitted on all painted pixels

    def on_start(self, loop: LoopState, task: Any) -> None:
        if loop.step > 0:  # resuming: the CNN is past its first answer
            return
        started = time.perf_counter()
        options = {"time_budget": quick_budget(self.time_budget)}
        self.model = self._run(self._job(task, options))
        self.heads["quick"] = (self.model, options)
        self.fit_s = round(time.perf_counter() - started, 2)
        loop.preview = self.model  # the opening event carries it: shown before any CNN step
        loop.info["first_answer"] = {"fit_s": self.fit_s, "mean_iou": None, "candidates": {}}
        loop.say(f"first answer (feature head) in {self.fit_s:.1f} s")
        fitted = self.model.metadata.training
        complete = fitted.get("windows") == fitted.get("windows_total")
        self.plan = list(candidates(self.time_budget, complete).items())

    def on_step_end(self, loop: LoopState, task: Any) -> None:
        """Advance the candidate being fitted by one feature window; offer it once fitted.

        A candidate's job is made when its turn comes (making one scans the annotations),
        never before the opening event, so the first preview is not delayed.
        """
        if self.job is None:
            self._next_job(loop, task)
            return
        with self.watch:
            try:
                next(self.job)
                return
            except StopIteration as stop:
                model = stop.value
        self.job = None
        if self.refitting is not None:
            self._refitted(loop, model)
            return
        self.heads[self.name] = (model, self.plan_options)
        score = self._validate(model, task)
        loop.info["first_answer"]["candidates"][self.name] = {
            "fit_s": round(self.watch(), 2), "mean_iou": score["mean_iou"] if score else None}
        if score is not None:
            self._offer(loop, model, score, f", feature head ({self.name}) {score['mean_iou']:.3f}")

    def _next_job(self, loop: LoopState, task: Any) -> None:
        """Start fitting the next candidate or, once all are validated, the refit of the best
        head on all painted pixels (only when a head is the best model)."""
        if self.plan:
            self.name, self.plan_options = self.plan.pop(0)
            options = self.plan_options
            holdout = True
        else:
            best = [n for n, (m, _) in self.heads.items() if m is loop.best_model]
            if self.refitting is not None or self.refit is not None or not best \
                    or not self.validated or is_short(self.time_budget):
                return
            self.name, self.refitting = best[0], loop.best_model
            options = {**self.heads[best[0]][1], "time_budget": candidate_cap(self.time_budget)}
            holdout = False
        self.watch = Stopwatch()
        with self.watch:
            self.job = self._job(task, options, self.watch, holdout=holdout)

    def _refitted(self, loop: LoopState, model: Any) -> None:
        """Keep the refit; it stands in for its head whenever that head is the best model."""
        self.refit, self.refitting = (self.refitting, model), None
        loop.info["first_answer"]["refit"] = {"of": self.name, "fit_s": round(self.watch(), 2),
                                              "swapped_in": False}
        self._swap(loop)

    def _swap(self, loop: LoopState) -> None:
        if self.refit is not None and loop.best_model is self.refit[0]:
            loop.best_model = self.refit[1]
            loop.info["first_answer"]["refit"]["swapped_in"] = True

    def after_epoch(self, loop: LoopState, task: Any) -> None:
        self._swap(loop)

    def on_epoch_end(self, loop: LoopState, task: Any) -> None:
        """Validate the first answer once, before the CNN's first validation compares with it."""
        if self.model is None or self.validated:
            return
        self.validated = True
        score = self._validate(self.model, task)
        if score is None:
            return
        loop.info["first_answer"]["mean_iou"] = score["mean_iou"]
        self._offer(loop, self.model, score, f", first answer {score['mean_iou']:.3f}")

    def on_close(self, loop: LoopState, task: Any) -> None:
        if self.job is not None:
            self.job.close()
        self.job, self.plan = None, []

    @staticmethod
    def _offer(loop: LoopState, model: Any, score: dict[str, float], note: str) -> None:
        """Make ``model`` the best so far if it validates better than the best so far."""
        loop.notes.append(note)
        if loop.best is None or score["mean_iou"] > loop.best:
            loop.best, loop.best_metrics, loop.best_model = score["mean_iou"], score, model

    def _job(self, task: Any, options: dict[str, Any],
             clock: Callable[[], float] = time.perf_counter, holdout: bool = True) -> Any:
        """The fitting job of a feature head with ``options`` (FeatureHeadSettings fields), on
        the painted pixels outside the validation blocks (all of them if not ``holdout``)."""
        data = task.data
        if self.inputs is None:  # read once per run: the quick fit and every candidate share it
            self.inputs = (estimate_training_normalization(data.images, "percentile",
                                                           seed=self.seed),
                           encoder_state(task.net.metadata.start))
        norm, weights = self.inputs
        settings = FeatureHeadSettings(seed=self.seed, device=str(task.device),
                                       **options).validated()
        channels = list(task.net.metadata.channel_names)
        labels = training_labels(task) if holdout else list(data.annotations)
        return iter_fit_feature_head(data.images, labels, n_classes=data.n_classes,
                                     normalization=norm,
                                     encoder_state=weights,
                                     settings=settings, class_names=data.class_names,
                                     class_colors=data.class_colors, channel_names=channels,
                                     clock=clock)

    @staticmethod
    def _run(job: Any) -> Any:
        while True:
            try:
                next(job)
            except StopIteration as stop:
                return stop.value

    def _validate(self, model: Any, task: Any) -> dict[str, float] | None:
        from ..tasks.segmentation import validate

        if not task.val_eval:
            return None
        model.to(task.device)
        cm = validate(model, task.data, task.val_eval, model.metadata.normalization,
                      task.device, False)
        model.cpu()
        return scores(cm, task.data.class_names)
