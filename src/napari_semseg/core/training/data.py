"""Training data for segmentation: input checks, the annotation index, patch batches.

Every input (shapes, dtypes, classes, channels, NaN) is checked before any work; the
annotations are scanned into an :class:`~napari_semseg.core.sampling.AnnotationIndex`; batches
are read patch by patch (only the windows of the patches) and normalized.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SemSegError
from ..model_schema import COLOR
from ..io import ImageSource, check_finite, open_array, open_image
from ..models import PALETTE, SemSegModel
from ..normalize import Normalization, estimate_normalization, sample_pixels
from ..sampling import AnnotationIndex, PatchSampler, scan_annotations


@dataclass
class TrainData:
    """Opened, checked training inputs."""

    images: list[ImageSource]
    annotations: list[ImageSource]
    index: AnnotationIndex
    n_classes: int
    class_names: list[str]
    class_colors: list[str]


def as_list(x: Any) -> list[Any]:
    """``x`` as a list (one image or a list/tuple of images)."""
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _label(i: int, n: int) -> str:
    return "the image" if n == 1 else f"image {i}"


def _raw_array(obj: Any) -> tuple[Any, Path | None, list | None]:
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        arr, geo = open_array(path)
        return arr, path, geo
    if not hasattr(obj, "shape") or not hasattr(obj, "dtype"):
        obj = np.asarray(obj)
    return obj, None, None


def open_annotations(annotation: Any, what: str) -> ImageSource:
    """Open one annotation array (labels: 0 = not annotated, 1..K) without reading it."""
    arr, path, _ = _raw_array(annotation)
    if isinstance(annotation, ImageSource):
        arr = annotation.data
    dtype = np.dtype(arr.dtype)
    if np.issubdtype(dtype, np.floating):
        raise SemSegError(f"annotations of {what} are floating point ({dtype}); give integer "
                          "labels (0 = not annotated, 1..K = classes), e.g. "
                          "labels.astype(numpy.uint8)")
    if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise SemSegError(f"annotations of {what} have type {dtype}; give integer labels")
    if arr.ndim < 2:
        raise SemSegError(f"annotations of {what} have shape {tuple(arr.shape)}; give a 2D (or "
                          "stacked) label image")
    return ImageSource(arr, None, path)


def _channel_axis(shape: tuple[int, ...], labels_shape: tuple[int, ...],
                  channel_axis: int | None, what: str) -> int | None:
    """The channel axis of an image of ``shape`` whose labels have ``labels_shape``."""
    if channel_axis is not None:
        if not -len(shape) <= channel_axis < len(shape):
            raise SemSegError(f"channel_axis {channel_axis} is out of range for {what} of "
                              f"shape {shape}")
        return channel_axis
    if shape == labels_shape:
        return None
    if len(shape) == len(labels_shape) + 1:
        fits = [a for a in range(len(shape)) if shape[:a] + shape[a + 1:] == labels_shape]
        if fits:
            return fits[-1]
    raise _mismatch(what, shape, labels_shape)


def open_training_image(image: Any, labels_shape: tuple[int, ...], channel_axis: int | None,
                        what: str, expected_channels: int | None = None) -> ImageSource:
    """Open an image whose labels have ``labels_shape``; infer its channel axis from that shape.

    An image with the labels' shape has one channel; one with an extra axis has channels on
    that axis (the last such axis if several fit).
    """
    if isinstance(image, ImageSource):
        source = image
    else:
        arr, path, geo = _raw_array(image)
        shape = tuple(int(s) for s in arr.shape)
        dtype = np.dtype(arr.dtype)
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or \
                np.issubdtype(dtype, np.complexfloating):
            raise SemSegError(f"{what} has pixel type {dtype}; give integer or float pixels")
        axis = _channel_axis(shape, tuple(labels_shape), channel_axis, what)
        source = ImageSource(arr, axis, path, geo)
    source = open_image(source, expected_channels=expected_channels)
    if tuple(source.output_shape) != tuple(labels_shape):
        raise _mismatch(what, source.shape, labels_shape)
    return source


def _mismatch(what: str, shape: tuple, labels_shape: tuple) -> SemSegError:
    return SemSegError(f"{what} has shape {tuple(shape)} but its annotations have shape "
                       f"{tuple(labels_shape)}; they must cover the same pixels (annotations "
                       "without the channel axis)")


def _check_finite(source: ImageSource, what: str) -> None:
    try:
        check_finite(source)
    except SemSegError:
        raise SemSegError(f"{what} contains NaN or infinite pixels; replace them (e.g. with "
                          "numpy.nan_to_num) before training") from None


def _palette(k: int) -> str:
    return "#%02x%02x%02x" % PALETTE[(k - 1) % len(PALETTE)]


def _open_pairs(images: list[Any], annotations: list[Any], channel_axis: int | None,
                model: SemSegModel | None) -> tuple[list[ImageSource], list[ImageSource]]:
    """Open and check each image with its annotations."""
    if not images:
        raise SemSegError("no training image given")
    if len(images) != len(annotations):
        raise SemSegError(f"{len(images)} image(s) but {len(annotations)} annotation array(s); "
                          "give one annotation array per image")
    n = len(images)
    expected = model.metadata.in_channels if model is not None else None
    img_sources: list[ImageSource] = []
    ann_sources: list[ImageSource] = []
    for i, (img, ann) in enumerate(zip(images, annotations, strict=True)):
        what = _label(i, n)
        a = open_annotations(ann, what)
        s = open_training_image(img, a.shape, channel_axis, what)
        if model is not None and s.n_channels != expected:
            raise SemSegError(f"{what} has {s.n_channels} channel(s) but the model to fine-tune "
                              f"expects {expected} ({', '.join(model.metadata.channel_names)}); "
                              "train a new model (model=None) or give matching images")
        if img_sources and s.n_channels != img_sources[0].n_channels:
            raise SemSegError(f"{what} has {s.n_channels} channel(s) but image 0 has "
                              f"{img_sources[0].n_channels}; all training images need the same "
                              "channels")
        _check_finite(s, what)
        ann_sources.append(a)
        img_sources.append(s)
    return img_sources, ann_sources


def _class_count(index: AnnotationIndex, model: SemSegModel | None,
                 class_names: list[str] | None) -> int:
    """The number of classes to train; refuse annotations that do not fit it."""
    k_model = model.metadata.classes if model is not None else None
    k = len(class_names) if class_names else None
    top = index.max_label
    if top == 0:
        raise SemSegError("no annotated pixel: paint at least two classes (labels 1..K; 0 means "
                          "not annotated)")
    if k is None:
        k = k_model if k_model is not None else top
        if k_model is None:
            _check_gaps(index.classes_present, top)
    if top > k:
        if class_names:
            raise SemSegError(f"annotations use class {top} but class_names lists only {k} "
                              "classes; give one name per class")
        raise SemSegError(f"annotations use class {top} but the model has {k} classes "
                          f"({', '.join(model.metadata.class_names if model else [])}); "
                          f"pass class_names with {top} names to add classes to it")
    if k_model is not None and k < k_model:
        raise SemSegError(f"class_names lists {k} classes but the model has {k_model}; a model "
                          "can gain classes but not lose them")
    present = index.classes_present
    if len(present) < 2:
        raise SemSegError(f"only class {present[0]} is annotated; paint at least two classes "
                          "so the network can learn to tell them apart")
    return k


def _check_gaps(present: list[int], top: int) -> None:
    """Without class names, the largest label sets the number of classes: refuse labels that
    leave most of those classes without a stroke (e.g. 255 meant as "ignore")."""
    missing = top - len(present)
    if missing > len(present):
        shown = ", ".join(map(str, present[:6])) + (", ..." if len(present) > 6 else "")
        raise SemSegError(f"annotations use labels {shown} (largest {top}): {missing} of the "
                          f"{top} classes this implies have no strokes; number the classes "
                          "1..K without gaps (0 = not annotated: set pixels meant to be "
                          "ignored, such as 255, to 0) or pass class_names")


def _pad_index(index: AnnotationIndex, k: int) -> None:
    """Give the index entries for classes up to ``k`` (some may not be annotated)."""
    if index.counts.shape[0] < k + 1:
        counts = np.zeros(k + 1, np.int64)
        counts[:len(index.counts)] = index.counts
        index.counts = counts
        index.points += [np.zeros((0, 4), np.int64)] * (k + 1 - len(index.points))
        index.weights += [np.zeros(0)] * (k + 1 - len(index.weights))


def _names_and_colors(k: int, model: SemSegModel | None, class_names: list[str] | None,
                      class_colors: list[str] | None) -> tuple[list[str], list[str]]:
    """Class names and colours: given, else the model's, else generic ones."""
    names = list(class_names) if class_names else []
    if not names:
        names = list(model.metadata.class_names) if model is not None else []
        names += [f"class {c}" for c in range(len(names) + 1, k + 1)]
    colors = list(class_colors) if class_colors else []
    if colors and len(colors) != k:
        raise SemSegError(f"class_colors has {len(colors)} entries but there are {k} classes")
    bad = [c for c in colors if not isinstance(c, str) or not COLOR.match(c)]
    if bad:
        raise SemSegError(f"class_colors holds {bad[0]!r}: give colours as #rrggbb, e.g. "
                          "#ff0000 for red")
    if not colors:
        colors = list(model.metadata.class_colors) if model is not None else []
        colors += [_palette(c) for c in range(len(colors) + 1, k + 1)]
    return names, colors


def prepare_data(images: Any, annotations: Any, *, channel_axis: int | None, block: int,
                 model: SemSegModel | None, class_names: list[str] | None,
                 class_colors: list[str] | None, seed: int) -> TrainData:
    """Open and check every input; scan the annotations. Raises :class:`SemSegError`."""
    img_sources, ann_sources = _open_pairs(as_list(images), as_list(annotations),
                                           channel_axis, model)
    index = scan_annotations(ann_sources, block, seed=seed, n_classes=None)
    k = _class_count(index, model, class_names)
    _pad_index(index, k)
    names, colors = _names_and_colors(k, model, class_names, class_colors)
    return TrainData(img_sources, ann_sources, index, k, names, colors)


def refresh(data: TrainData, annotations: Any, seed: int) -> TrainData:
    """New annotations for the same images: check and rescan them."""
    anns = as_list(annotations)
    if len(anns) != len(data.images):
        raise SemSegError(f"{len(anns)} annotation array(s) for {len(data.images)} image(s)")
    sources = []
    for i, (a, s) in enumerate(zip(anns, data.images, strict=True)):
        src = open_annotations(a, _label(i, len(anns)))
        if tuple(src.shape) != tuple(s.output_shape):
            raise SemSegError(f"annotations {i} have shape {src.shape}, expected {s.output_shape}")
        sources.append(src)
    index = scan_annotations(sources, data.index.block, seed=seed, n_classes=data.n_classes)
    if index.max_label > data.n_classes:
        raise SemSegError(f"class {index.max_label} is not one of the model's {data.n_classes} "
                          "classes; restart training to add it")
    if len(index.classes_present) < 2:
        raise SemSegError("fewer than two classes annotated")
    return TrainData(data.images, sources, index, data.n_classes, data.class_names,
                     data.class_colors)


def estimate_training_normalization(images: list[ImageSource], mode: str = "percentile",
                                    max_pixels: int = 2**22, seed: int = 0) -> Normalization:
    """Normalization statistics from a bounded sample spread over all training images."""
    if len(images) == 1:
        return estimate_normalization(images[0], mode=mode, max_pixels=max_pixels, seed=seed)
    per = max(4096, max_pixels // len(images))
    sample = np.concatenate([sample_pixels(s, max_pixels=per, seed=seed + i)
                             for i, s in enumerate(images)], axis=1)
    pool = ImageSource(sample[:, None, :], 0)
    return estimate_normalization(pool, mode=mode, max_pixels=sample.shape[1] + 1, seed=seed)


def read_batch(sampler: PatchSampler, norm: Normalization, n: int, patch: int, zoom: float,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` normalized patches ``(n, C, s, s)`` and their labels ``(n, s, s)``, where ``s`` is
    ``patch * zoom`` (the zoom is undone on the device, see :func:`~..augment.rescale`)."""
    size = max(8, int(round(patch * zoom)))
    imgs, labs = [], []
    for _ in range(n):
        img, lab = sampler.read(size)
        imgs.append(norm.apply(img))
        labs.append(lab)
    return torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(labs))


def describe_sources(sources: list[ImageSource]) -> list[dict[str, Any]]:
    """Shape, type, channel axis and path of each image, for the training record."""
    return [{"shape": list(s.shape), "dtype": str(s.dtype), "channel_axis": s.channel_axis,
             "path": str(s.path) if s.path else None} for s in sources]
