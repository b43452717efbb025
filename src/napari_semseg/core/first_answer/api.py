"""``fit_feature_head``: the instant first model from arrays or files (API entry point).

The training engine, which opens and checks its inputs itself, calls
:func:`.fit.iter_fit_feature_head` directly; this module opens and checks them for direct use.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SemSegError
from ..io import ImageSource, open_array, open_image
from ..models import SemSegModel
from ..normalize import Normalization, estimate_normalization, sample_pixels
from ..progress import drive
from .fit import FeatureHeadSettings, FitProgress, iter_fit_feature_head


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _open_labels(annotation: Any, what: str) -> ImageSource:
    if isinstance(annotation, (str, os.PathLike)):
        annotation, _ = open_array(Path(annotation))
    elif not hasattr(annotation, "dtype"):
        annotation = np.asarray(annotation)
    dtype = np.dtype(annotation.dtype)
    if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise SemSegError(f"annotations of {what} have type {dtype}; give integer labels "
                          "(0 = not painted, 1..K = classes), e.g. labels.astype(numpy.uint8)")
    if annotation.ndim < 2:
        raise SemSegError(f"annotations of {what} have shape {tuple(annotation.shape)}; give a "
                          "2D (or stacked) label image")
    return ImageSource(annotation, None)


def open_inputs(images: Any, annotations: Any, channel_axis: int | None = None
                ) -> tuple[list[ImageSource], list[ImageSource]]:
    """Open images and their annotations lazily and check that they fit together."""
    imgs, anns = _as_list(images), _as_list(annotations)
    if not imgs or len(imgs) != len(anns):
        raise SemSegError(f"{len(imgs)} image(s) but {len(anns)} annotation array(s); give one "
                          "annotation array per image")
    sources: list[ImageSource] = []
    labels: list[ImageSource] = []
    for i, (img, ann) in enumerate(zip(imgs, anns, strict=False)):
        what = "the image" if len(imgs) == 1 else f"image {i}"
        lab = _open_labels(ann, what)
        src = open_image(img, channel_axis)
        if tuple(src.output_shape) != lab.shape:
            raise SemSegError(f"{what} has shape {src.shape} but its annotations have shape "
                              f"{lab.shape}; they must cover the same pixels")
        if sources and src.n_channels != sources[0].n_channels:
            raise SemSegError(f"{what} has {src.n_channels} channel(s) but image 0 has "
                              f"{sources[0].n_channels}; all images need the same channels")
        sources.append(src)
        labels.append(lab)
    return sources, labels


def pooled_normalization(images: list[ImageSource], seed: int = 0,
                         max_pixels: int = 2**22) -> Normalization:
    """Percentile normalization from a bounded sample spread over all images."""
    per = max(4096, max_pixels // len(images))
    sample = np.concatenate([sample_pixels(s, max_pixels=per, seed=seed + i)
                             for i, s in enumerate(images)], axis=1)
    pool = ImageSource(sample[:, None, :], 0)
    return estimate_normalization(pool, max_pixels=sample.shape[1] + 1, seed=seed)


def _max_label(annotations: list[ImageSource]) -> int:
    top = 0
    for a in annotations:
        for p in range(a.n_planes):
            h, w = a.plane_shape
            for y in range(0, h, 2048):
                top = max(top, int(a.read(p, slice(y, min(h, y + 2048)), slice(0, w)).max()))
    return top


def fit_feature_head(images: Any, annotations: Any, *, time_budget: float | None = None,
                     encoder_state: Mapping[str, torch.Tensor] | None = None,
                     class_names: list[str] | None = None, class_colors: list[str] | None = None,
                     channel_axis: int | None = None, normalization: Normalization | None = None,
                     settings: FeatureHeadSettings | None = None,
                     callback: Callable[[FitProgress], Any] | None = None,
                     clock: Callable[[], float] = time.perf_counter,
                     **options: Any) -> SemSegModel:
    """Fit a model in seconds from painted pixels: frozen pretrained features + a light head.

    Parameters
    ----------
    images, annotations
        One image or a list (arrays or paths) and one label array per image (0 = not painted,
        1..K = classes), as for :func:`napari_semseg.train`.
    time_budget
        Wall-clock seconds for features and fitting (default: no limit).
    encoder_state
        MobileNetV2 ImageNet weights as a state dict (keys ``features.N.*``, as torchvision and
        segmentation-models-pytorch name them). Required for now: nothing is downloaded.
    class_names, class_colors, channel_axis, normalization
        As for :func:`napari_semseg.train` (normalization: estimated from the images if None).
    settings
        A :class:`FeatureHeadSettings`; keyword ``options`` override its fields.
    callback
        Called with every :class:`FitProgress`; return ``False`` to cancel.
    clock
        What ``time_budget`` counts: wall-clock seconds by default; ``time.process_time``
        counts this process's CPU seconds (on a shared machine, the budget a quiet one gives).

    Returns
    -------
    SemSegModel
        Architecture ``feature-head``: runs in :func:`napari_semseg.segment`, saved and loaded
        by :func:`napari_semseg.save_model` / :func:`napari_semseg.load_model`.
    """
    base = settings or FeatureHeadSettings()
    values = {**{k: getattr(base, k) for k in base.__dataclass_fields__}, **options}
    if time_budget is not None:
        values["time_budget"] = time_budget
    unknown = sorted(set(values) - set(base.__dataclass_fields__))
    if unknown:
        raise SemSegError(f"unknown option(s) {', '.join(unknown)} for fit_feature_head")
    settings = FeatureHeadSettings(**values).validated()
    if encoder_state is None:
        raise SemSegError("fit_feature_head needs the pretrained MobileNetV2 weights: pass "
                          "encoder_state (a state dict with keys features.N.*)")
    sources, labels = open_inputs(images, annotations, channel_axis)
    n_classes = len(class_names) if class_names else _max_label(labels)
    if n_classes < 2:
        raise SemSegError("paint at least two classes (labels 1..K; 0 means not painted)")
    channels = ["red", "green", "blue"] if sources[0].n_channels == 3 else None
    norm = normalization or pooled_normalization(sources, settings.seed)
    job = iter_fit_feature_head(sources, labels, n_classes=n_classes, normalization=norm,
                                encoder_state=encoder_state, settings=settings,
                                class_names=class_names, class_colors=class_colors,
                                channel_names=channels, clock=clock)
    return drive(job, callback)
