"""Warnings about a trained model that users should see: it predicts (almost) one class, or it
scores low on the strokes held out for validation.

A short budget on a busy CPU can return a model that labels every pixel "membrane"; its record
says so (per-class recall on the validation strokes). :func:`training_warnings` turns the
record into one line each, saying what to do.
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

MISSED_RECALL = 0.05  # a class found on fewer than 5 % of its validation pixels is "never predicted"
LOW_MEAN_IOU = 0.5  # below this the segmentation is mostly wrong on the held-out strokes


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and math.isfinite(value)


def missed_classes(metrics: dict[str, Any], class_names: list[str]) -> list[str]:
    """Classes (present in the validation strokes) that the model (almost) never predicts."""
    return [name for name in class_names
            if _finite(metrics.get(f"recall/{name}"))
            and metrics[f"recall/{name}"] < MISSED_RECALL]


def training_warnings(record: dict[str, Any] | None, class_names: list[str]) -> list[str]:
    """One line per problem of a trained model, with what to do; empty when it looks sound.

    ``record`` is the model's training record (``metadata.training``): its ``best_metrics``
    are the validation scores of the weights kept. Without validation nothing is said.
    """
    metrics = (record or {}).get("best_metrics") or {}
    if not metrics:
        return []
    missed = missed_classes(metrics, class_names)
    if missed:
        found = [n for n in class_names if n not in missed
                 and _finite(metrics.get(f"recall/{n}"))]
        what = (f"the model predicts only '{found[0]}'" if len(found) == 1
                else f"the model (almost) never predicts {', '.join(map(repr, missed))}")
        return [f"{what} on the held-out strokes: paint more of class "
                f"{', '.join(map(repr, missed))} (and across the image), or train longer"]
    miou = metrics.get("mean_iou")
    if _finite(miou) and miou < LOW_MEAN_IOU:
        return [f"the model scores only {miou:.2f} mean IoU on the held-out strokes: train "
                "longer (time budget) or paint more strokes where it is wrong"]
    return []
