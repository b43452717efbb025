"""Evaluate a segmentation (or a model on an image) against ground truth, chunk by chunk.

``evaluate(prediction_or_model, ground_truth, image=None)`` returns an
:class:`EvaluationReport` with per-class IoU, Dice, precision and recall, pixel accuracy, mean
IoU and the confusion matrix, as a dict/JSON and as a readable table. Neither the prediction nor
the ground truth is ever loaded whole: label images are compared band by band, and a model's
prediction is compared chunk by chunk as :func:`~napari_semseg.core.predict.iter_segment`
produces it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SemSegError
from .io import ImageSource
from .metrics import confusion_matrix, scores


@dataclass
class EvaluationReport:
    """Scores of a segmentation against ground truth.

    Attributes
    ----------
    class_names
        Names of classes 1..K.
    confusion
        ``(K + 1, K + 1)`` label-indexed confusion matrix: ``confusion[t, p]`` pixels of true
        class ``t`` predicted as ``p`` (column 0: predicted as no class).
    metrics
        Flat dict: ``accuracy``, ``mean_iou``, ``mean_dice`` and ``iou/<name>``,
        ``dice/<name>``, ``precision/<name>``, ``recall/<name>``.
    ignore
        Ground-truth values that were not scored.
    """

    class_names: list[str]
    confusion: np.ndarray
    metrics: dict[str, float]
    ignore: list[int] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_iou(self) -> float:
        return self.metrics["mean_iou"]

    @property
    def accuracy(self) -> float:
        return self.metrics["accuracy"]

    @property
    def pixels(self) -> int:
        return int(self.confusion.sum())

    def per_class(self) -> list[dict[str, Any]]:
        """One dict per class: name, label, pixels, iou, dice, precision, recall."""
        out: list[dict[str, Any]] = []
        for k, name in enumerate(self.class_names, start=1):
            out.append({"class": name, "label": k, "pixels": int(self.confusion[k].sum()),
                        **{m: _clean(self.metrics[f"{m}/{name}"])
                           for m in ("iou", "dice", "precision", "recall")}})
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN written as null)."""
        return {
            "mean_iou": _clean(self.metrics["mean_iou"]),
            "mean_dice": _clean(self.metrics["mean_dice"]),
            "accuracy": _clean(self.metrics["accuracy"]),
            "pixels": self.pixels,
            "classes": self.per_class(),
            "confusion_matrix": {
                "rows": "true label 1..K", "columns": "predicted label 0..K (0 = no class)",
                "values": self.confusion[1:].tolist()},
            "ignore": list(self.ignore),
            "source": self.source,
        }

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON; also written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def table(self) -> str:
        """A readable text table: per-class scores, summary and the confusion matrix."""
        names = self.class_names
        width = max(8, *(len(n) for n in names))
        lines = [f"{'class':<{width}}  {'IoU':>6}  {'Dice':>6}  {'prec.':>6}  {'recall':>6}  "
                 f"{'pixels':>10}"]
        for row in self.per_class():
            vals = "  ".join(_fmt(row[m]) for m in ("iou", "dice", "precision", "recall"))
            lines.append(f"{row['class']:<{width}}  {vals}  {row['pixels']:>10}")
        lines.append(f"{'mean IoU':<{width}}  {_fmt(self.metrics['mean_iou'])}")
        lines.append(f"{'accuracy':<{width}}  {_fmt(self.metrics['accuracy'])}")
        lines.append("")
        lines.append("confusion matrix (rows: truth, columns: prediction)")
        cols = names + (["none"] if self.confusion[1:, 0].any() else [])
        cw = max(width, *(len(c) for c in cols), len(str(int(self.confusion.max()))))
        lines.append(" " * width + "".join(f"  {c:>{cw}}" for c in cols))
        for k, name in enumerate(names, start=1):
            counts = list(self.confusion[k, 1:])
            if len(cols) > len(names):
                counts.append(self.confusion[k, 0])
            lines.append(f"{name:<{width}}" + "".join(f"  {int(v):>{cw}}" for v in counts))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _clean(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _fmt(v: float | None) -> str:
    return "     -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.3f}"


def _labels_source(obj: Any, what: str) -> ImageSource:
    from .io import open_array

    path = None
    if isinstance(obj, ImageSource):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        obj, _ = open_array(path)
    if not hasattr(obj, "shape") or not hasattr(obj, "dtype"):
        obj = np.asarray(obj)
    dtype = np.dtype(obj.dtype)
    if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise SemSegError(f"{what} has type {dtype}; give integer labels (classes 1..K)")
    if obj.ndim < 2:
        raise SemSegError(f"{what} has shape {tuple(obj.shape)}; give a label image")
    return ImageSource(obj, None, path)


def _bands(source: ImageSource, rows: int) -> Iterable[tuple[int, slice]]:
    h, _ = source.plane_shape
    for p in range(source.n_planes):
        for y in range(0, h, rows):
            yield p, slice(y, min(h, y + rows))


def _max_label(source: ImageSource, ignore: set[int], rows: int) -> int:
    top = 0
    w = source.plane_shape[1]
    for p, band in _bands(source, rows):
        block = source.read(p, band, slice(0, w))[0]
        if ignore:
            block = block[~np.isin(block, list(ignore))]
        if block.size:
            top = max(top, int(block.max()))
    return top


def _is_model(obj: Any) -> bool:
    from .models import SemSegModel

    if isinstance(obj, SemSegModel):
        return True
    return isinstance(obj, (str, os.PathLike)) and str(obj).lower().endswith(".safetensors")


def evaluate(prediction_or_model: Any, ground_truth: Any, image: Any = None, *,
             ignore: Iterable[int] = (0,), class_names: list[str] | None = None,
             n_classes: int | None = None, device: str = "auto",
             channel_axis: int | None = None,
             callback: Callable[[Any], Any] | None = None,
             **predict_options: Any) -> EvaluationReport:
    """Score a segmentation, or a model on an image, against ground truth.

    Parameters
    ----------
    prediction_or_model
        A label image (numpy/dask/zarr array or file; classes 1..K), or a model / model file
        (``.safetensors``), in which case ``image`` is segmented first (chunk by chunk).
    ground_truth
        Label image of the same shape (array or file): classes 1..K; values in ``ignore`` and
        values above K are not scored.
    image
        The image to segment when a model is given.
    ignore
        Ground-truth values not scored (0 = not annotated; add e.g. 255 for "void").
    class_names
        Names of classes 1..K (default: the model's, else ``class k``).
    n_classes
        K (default: the model's classes, else ``len(class_names)``, else the largest label
        in the ground truth and prediction outside ``ignore``).
    device, channel_axis, callback, **predict_options
        Passed to :func:`~napari_semseg.core.predict.iter_segment` when segmenting.

    Returns
    -------
    EvaluationReport
    """
    ignore_set = {int(v) for v in ignore}
    truth = _labels_source(ground_truth, "ground truth")
    if _is_model(prediction_or_model):
        if image is None:
            raise SemSegError("evaluating a model needs the image to segment (image=...)")
        names, cm, source = _score_model(
            prediction_or_model, image, truth, ignore_set, class_names, n_classes,
            callback=callback, device=device, channel_axis=channel_axis, **predict_options)
    else:
        names, cm, source = _score_labels(prediction_or_model, truth, ignore_set, class_names,
                                          n_classes)
    if cm.sum() == 0:
        raise SemSegError("the ground truth has no pixel of classes 1..K outside the ignored "
                          "values; nothing to evaluate")
    return EvaluationReport(names, cm, scores(cm, names), sorted(ignore_set), source)


def _class_names(class_names: list[str] | None, default: list[str], k: int) -> list[str]:
    names = list(class_names or default)
    if len(names) != k:
        raise SemSegError(f"class_names has {len(names)} entries but there are {k} classes")
    return names


def _score_model(model_or_path: Any, image: Any, truth: ImageSource, ignore_set: set[int],
                 class_names: list[str] | None, n_classes: int | None, *,
                 callback: Callable[[Any], Any] | None, device: str,
                 channel_axis: int | None, **predict_options: Any
                 ) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Segment ``image`` chunk by chunk and accumulate the confusion matrix against ``truth``."""
    from .io import open_image
    from .models import as_model
    from .predict import iter_segment
    from .progress import drive

    model = as_model(model_or_path)
    meta = model.metadata
    k = n_classes or meta.classes
    names = _class_names(class_names, list(meta.class_names), k)
    src = open_image(image, channel_axis, expected_channels=meta.in_channels)
    if tuple(src.output_shape) != tuple(truth.shape):
        raise SemSegError(f"ground truth has shape {truth.shape} but the image gives labels "
                          f"of shape {src.output_shape}; they must cover the same pixels")
    cm = np.zeros((k + 1, k + 1), np.int64)

    def consume(event: Any) -> Any:
        for ch in getattr(event, "chunks", None) or []:
            rws, cls = ch.region
            gt = truth.read(ch.plane, rws, cls)[0]
            np.add(cm, confusion_matrix(ch.labels, gt, k, ignore_set), out=cm)
        return callback(event) if callback is not None else None

    job = iter_segment(image, model, device=device, channel_axis=channel_axis,
                       **predict_options)
    drive(job, consume)
    source = {"model": {"arch": meta.arch, "encoder": meta.encoder},
              "image": str(image) if isinstance(image, (str, os.PathLike)) else None}
    return names, cm, source


def _score_labels(prediction: Any, truth: ImageSource, ignore_set: set[int],
                  class_names: list[str] | None, n_classes: int | None
                  ) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Compare a label image with ``truth`` band by band."""
    pred = _labels_source(prediction, "prediction")
    if tuple(pred.shape) != tuple(truth.shape):
        raise SemSegError(f"prediction has shape {pred.shape} but ground truth has shape "
                          f"{truth.shape}; they must cover the same pixels")
    w = truth.plane_shape[1]
    rows = max(1, 2**22 // max(w, 1))
    k = n_classes or (len(class_names) if class_names else 0)
    if not k:
        k = max(_max_label(truth, ignore_set, rows), _max_label(pred, ignore_set, rows))
        if k == 0:
            raise SemSegError("the ground truth holds no class (only ignored values); "
                              "nothing to evaluate")
    names = _class_names(class_names, [f"class {c}" for c in range(1, k + 1)], k)
    cm = np.zeros((k + 1, k + 1), np.int64)
    for p, band in _bands(truth, rows):
        gt = truth.read(p, band, slice(0, w))[0]
        pr = pred.read(p, band, slice(0, w))[0]
        cm += confusion_matrix(pr, gt, k, ignore_set)
    source = {"prediction": str(pred.path) if pred.path else None}
    return names, cm, source
