"""Confusion matrices and the scores derived from them (IoU, Dice, precision, recall, accuracy).

Classes are 1..K as in napari Labels; row ``i`` / column ``j`` of a confusion matrix counts
pixels of true class ``i + 1`` predicted as class ``j + 1``. Pixels whose true value is 0 or in
``ignore`` are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def confusion_matrix(prediction: np.ndarray, truth: np.ndarray, n_classes: int,
                     ignore: Iterable[int] = (0,)) -> np.ndarray:
    """Count ``(true, predicted)`` label pairs over the pixels whose truth is a class 1..K.

    Parameters
    ----------
    prediction, truth
        Integer arrays of the same shape (classes 1..K).
    n_classes
        K. Truth values outside 1..K or in ``ignore`` are skipped.
    ignore
        Truth values to skip (0 = not annotated by convention).

    Returns
    -------
    numpy.ndarray
        ``(K + 1, K + 1)`` int64 matrix indexed by label value: ``cm[t, p]`` counts pixels of true
        class ``t`` predicted as ``p``. Row 0 is always zero; column 0 counts pixels predicted as
        no class (0 or a value outside 1..K), which are errors.
    """
    truth = np.asarray(truth).ravel()
    prediction = np.asarray(prediction).ravel()
    if truth.shape != prediction.shape:
        raise ValueError(f"prediction has {prediction.size} pixels, truth {truth.size}")
    keep = (truth >= 1) & (truth <= n_classes)
    for v in ignore:
        keep &= truth != v
    t = truth[keep].astype(np.int64)
    p = prediction[keep].astype(np.int64)
    p[(p < 1) | (p > n_classes)] = 0
    k1 = n_classes + 1
    return np.bincount(t * k1 + p, minlength=k1 * k1).reshape(k1, k1)


def scores(cm: np.ndarray, class_names: list[str] | None = None) -> dict[str, float]:
    """Scores from a label-indexed ``(K + 1, K + 1)`` confusion matrix.

    Returns a flat dict: ``accuracy``, ``mean_iou``, ``mean_dice`` (over classes present in the
    truth or the prediction), and per class ``iou/<name>``, ``dice/<name>``,
    ``precision/<name>``, ``recall/<name>`` (NaN where undefined).
    """
    cm = np.asarray(cm, np.float64)
    k = cm.shape[0] - 1
    names = class_names or [f"class {i}" for i in range(1, k + 1)]
    tp = np.diag(cm)[1:]
    truth = cm[1:].sum(1)
    pred = cm[1:, 1:].sum(0)
    union = truth + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        dice = np.where(truth + pred > 0, 2 * tp / (truth + pred), np.nan)
        precision = np.where(pred > 0, tp / pred, np.nan)
        recall = np.where(truth > 0, tp / truth, np.nan)
    total = truth.sum()
    out: dict[str, float] = {
        "accuracy": float(tp.sum() / total) if total else float("nan"),
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "mean_dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan"),
    }
    for i, name in enumerate(names):
        out[f"iou/{name}"] = float(iou[i])
        out[f"dice/{name}"] = float(dice[i])
        out[f"precision/{name}"] = float(precision[i])
        out[f"recall/{name}"] = float(recall[i])
    return out


def mean_iou(prediction: np.ndarray, truth: np.ndarray, n_classes: int,
             ignore: Iterable[int] = (0,)) -> float:
    """Mean IoU over the classes present in the truth or the prediction."""
    return scores(confusion_matrix(prediction, truth, n_classes, ignore))["mean_iou"]
