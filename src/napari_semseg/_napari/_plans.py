"""Typed plans of the widgets' jobs: what was checked on the main thread before a job starts.

A widget's ``_plan()`` reads its fields, checks them (raising
:class:`~napari_semseg.core.errors.SemSegError` with a one-line fix) and returns one of these;
the job then only reads the plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from ..core.io import ImageSource
    from ..core.models import ModelMetadata
    from ..core.settings import PredictSettings, TrainSettings


@dataclass(frozen=True)
class SegmentPlan:
    """A checked segmentation job of the Segment widget."""

    layer: Any  # the napari Image layer to segment
    meta: ModelMetadata  # the chosen model's metadata (from the file header)
    source: ImageSource  # the layer's pixels as the engine reads them
    settings: PredictSettings
    spatial: dict[str, Any]  # scale, translate, units of the result layers
    store: Path | None  # zarr store of a large result; None: in memory
    geo_tags: list | None  # GeoTIFF tags of the image, copied to saved results
    loader: Callable[[], Any]  # returns the model (call it in the worker: it may wait for it)


@dataclass(frozen=True)
class TrainPlan:
    """A checked training job of the Train widget."""

    image: Any  # the napari Image layer to learn from
    annotations_layer: Any  # the Labels layer with the strokes (never modified)
    source: ImageSource
    annotations: np.ndarray  # a copy of the strokes: the live layer never goes to the trainer
    settings: TrainSettings
    class_names: list[str]
    class_colors: list[str]
    loader: Callable[[], Any]  # returns the model to start from (None: a new model)
    notes: tuple[str, ...] = ()  # warnings shown when the job starts (it goes on)
