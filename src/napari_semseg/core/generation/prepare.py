"""Inputs of generator training: open and check image/label-map pairs before any work, and
measure the image statistics the generator will reproduce.

Images and label maps are opened lazily; an image has the shape of its label map, plus one
channel axis for multichannel images. Statistics (the per-channel intensity range the
network's ``[-1, 1]`` maps onto, and every class's mean and spread) come from a bounded sample.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SemSegError
from ..io import ImageSource, check_finite, open_array, open_image
from ..models import PALETTE
from .labels import check_label_values, open_label_map

SAMPLE_PIXELS = 2**22  # pixels read per image (at most) for the statistics
LOW, HIGH = 0.1, 99.9  # percentiles mapped onto the network's -1 and 1


@dataclass
class GeneratorData:
    """Opened, checked training pairs and what was measured on them."""

    images: list[ImageSource]
    labels: list[ImageSource]
    classes: int
    class_names: list[str]
    class_colors: list[str]
    dtype: np.dtype
    low: list[float]
    high: list[float]
    class_means: list[list[float]]
    class_stds: list[list[float]]


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _open_image_for(image: Any, labels: ImageSource, channel_axis: int | None,
                    what: str) -> ImageSource:
    """Open ``image`` whose label map is ``labels``: same shape, or one extra channel axis."""
    arr, geo, path = image, None, None
    if isinstance(image, ImageSource):
        arr, path, geo = image.data, image.path, image.geo_tags
        channel_axis = image.channel_axis if channel_axis is None else channel_axis
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        arr, geo = open_array(path)
    elif not hasattr(image, "shape"):
        arr = np.asarray(image)
    shape, lshape = tuple(int(s) for s in arr.shape), labels.shape
    if channel_axis is None and shape != lshape:
        fits = [a for a in range(len(shape))
                if len(shape) == len(lshape) + 1 and shape[:a] + shape[a + 1:] == lshape]
        if not fits:
            raise SemSegError(f"{what} has shape {shape} but its label map has shape {lshape}; "
                              "they must cover the same pixels (the image may have one more "
                              "axis, for channels)")
        channel_axis = fits[-1]
    source = open_image(ImageSource(arr, channel_axis, path, geo))
    if source.output_shape != lshape:
        raise SemSegError(f"{what} has shape {shape} but its label map has shape {lshape}; "
                          "they must cover the same pixels")
    try:
        check_finite(source)
    except SemSegError:
        raise SemSegError(f"{what} contains NaN or infinite pixels; replace them (e.g. with "
                          "numpy.nan_to_num) before training") from None
    return source


def open_pairs(images: Any, label_maps: Any, channel_axis: int | None = None
               ) -> tuple[list[ImageSource], list[ImageSource]]:
    """Open and check every image/label-map pair (shapes, dtypes, channels)."""
    imgs, maps = _as_list(images), _as_list(label_maps)
    if not imgs:
        raise SemSegError("no training image given")
    if len(imgs) != len(maps):
        raise SemSegError(f"{len(imgs)} image(s) but {len(maps)} label map(s); give one label "
                          "map per image")
    out_i: list[ImageSource] = []
    out_l: list[ImageSource] = []
    for i, (img, lab) in enumerate(zip(imgs, maps, strict=False)):
        what = "the image" if len(imgs) == 1 else f"image {i}"
        lsrc = open_label_map(lab)
        src = _open_image_for(img, lsrc, channel_axis, what)
        if out_i and src.n_channels != out_i[0].n_channels:
            raise SemSegError(f"{what} has {src.n_channels} channel(s) but image 0 has "
                              f"{out_i[0].n_channels}; all training images need the same "
                              "channels")
        if out_i and src.dtype != out_i[0].dtype:
            raise SemSegError(f"{what} has pixel type {src.dtype} but image 0 has "
                              f"{out_i[0].dtype}; convert them to one type")
        out_i.append(src)
        out_l.append(lsrc)
    return out_i, out_l


def _sample(image: ImageSource, labels: ImageSource, seed: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(C, n)`` and their labels ``(n,)`` from (a bounded sample of) one pair."""
    rng = np.random.default_rng(seed)
    h, w = image.plane_shape
    win = int(min(h, w, 256))
    n_windows = max(1, min(SAMPLE_PIXELS // (win * win),
                           image.n_planes * (h // win) * (w // win)))
    pix, lab = [], []
    for _ in range(n_windows):
        if n_windows == 1 and image.n_planes == 1:
            rows, cols, p = slice(0, h), slice(0, w), 0
        else:
            p = int(rng.integers(image.n_planes))
            y, x = int(rng.integers(0, h - win + 1)), int(rng.integers(0, w - win + 1))
            rows, cols = slice(y, y + win), slice(x, x + win)
        pix.append(image.read(p, rows, cols).reshape(image.n_channels, -1))
        lab.append(labels.read(p, rows, cols).reshape(-1))
    return np.concatenate(pix, 1), np.concatenate(lab)


def measure(images: list[ImageSource], labels: list[ImageSource], classes: int, seed: int = 0
            ) -> tuple[list[float], list[float], list[list[float]], list[list[float]]]:
    """Intensity range (percentiles 0.1 / 99.9 per channel) and per-class mean and std."""
    samples = [_sample(i, lab, seed + k) for k, (i, lab) in enumerate(zip(images, labels, strict=False))]
    pix = np.concatenate([s[0] for s in samples], 1).astype(np.float64)
    lab = np.concatenate([s[1] for s in samples])
    low = np.percentile(pix, LOW, axis=1)
    high = np.percentile(pix, HIGH, axis=1)
    high = np.where(high > low, high, low + 1.0)
    means = np.zeros((classes, pix.shape[0]))
    stds = np.zeros((classes, pix.shape[0]))
    for k in range(1, classes + 1):
        sel = lab == k
        if sel.any():
            means[k - 1], stds[k - 1] = pix[:, sel].mean(1), pix[:, sel].std(1)
    return (np.round(low, 4).tolist(), np.round(high, 4).tolist(),
            np.round(means, 4).tolist(), np.round(stds, 4).tolist())


def prepare_data(images: Any, label_maps: Any, *, channel_axis: int | None = None,
                 class_names: list[str] | None = None, class_colors: list[str] | None = None,
                 seed: int = 0) -> GeneratorData:
    """Open and check every input, find the classes, and measure the image statistics."""
    imgs, maps = open_pairs(images, label_maps, channel_axis)
    top = max(check_label_values(m, 2**31) for m in maps)
    if top == 0:
        raise SemSegError("the label maps hold no class (all 0); give label maps with classes "
                          "1..K")
    k = len(class_names) if class_names else top
    if top > k:
        raise SemSegError(f"the label maps use class {top} but class_names lists only {k} "
                          "classes; give one name per class")
    names = list(class_names) if class_names else [f"class {c}" for c in range(1, k + 1)]
    colors = list(class_colors) if class_colors else [
        "#%02x%02x%02x" % PALETTE[(c - 1) % len(PALETTE)] for c in range(1, k + 1)]
    if len(colors) != k:
        raise SemSegError(f"class_colors has {len(colors)} entries but there are {k} classes")
    low, high, means, stds = measure(imgs, maps, k, seed)
    return GeneratorData(imgs, maps, k, names, colors, imgs[0].dtype, low, high, means, stds)
