"""The instant first answer: a feature-head model fitted before the CNN's first step.

A :class:`~napari_semseg.core.first_answer.net.FeatureHeadNet` (frozen MobileNetV2 features and
a light per-pixel head, :mod:`napari_semseg.core.first_answer`) is fitted in seconds on the
painted pixels of the training blocks; the run's opening event carries it as a preview, so a
viewer shows a first segmentation while the CNN starts. It is validated on the same held-out
blocks as the CNN and competes with it: the run returns whichever validates better
(``loop.best_model``), so a short ``time_budget`` still returns a usable model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
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
SHARE = 0.25  # at most this share of a time budget goes to the first answer
MAX_SECONDS = 8.0  # and at most this many seconds


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
    ``device``).
    """

    def __init__(self, time_budget: float | None, seed: int = 0) -> None:
        self.time_budget, self.seed = time_budget, seed
        self.model: Any = None
        self.fit_s = 0.0
        self.validated = False

    def on_start(self, loop: LoopState, task: Any) -> None:
        if loop.step > 0:  # resuming: the CNN is past its first answer
            return
        started = time.perf_counter()
        self.model = self._fit(task)
        self.fit_s = round(time.perf_counter() - started, 2)
        loop.preview = self.model  # the opening event carries it: shown before any CNN step
        loop.info["first_answer"] = {"fit_s": self.fit_s, "mean_iou": None}
        loop.say(f"first answer (feature head) in {self.fit_s:.1f} s")

    def on_epoch_end(self, loop: LoopState, task: Any) -> None:
        """Validate the first answer once, before the CNN's first validation compares with it."""
        if self.model is None or self.validated:
            return
        self.validated = True
        score = self._validate(self.model, task)
        if score is None:
            return
        loop.best, loop.best_metrics, loop.best_model = score["mean_iou"], score, self.model
        loop.info["first_answer"]["mean_iou"] = score["mean_iou"]
        loop.notes.append(f", first answer {score['mean_iou']:.3f}")

    def _fit(self, task: Any) -> Any:
        data = task.data
        norm = estimate_training_normalization(data.images, "percentile", seed=self.seed)
        budget = None if self.time_budget is None else \
            min(MAX_SECONDS, max(1.0, SHARE * self.time_budget))
        settings = FeatureHeadSettings(time_budget=budget, seed=self.seed,
                                       device=str(task.device)).validated()
        channels = list(task.net.metadata.channel_names)
        job = iter_fit_feature_head(data.images, training_labels(task), n_classes=data.n_classes,
                                    normalization=norm,
                                    encoder_state=encoder_state(task.net.metadata.start),
                                    settings=settings, class_names=data.class_names,
                                    class_colors=data.class_colors, channel_names=channels)
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
