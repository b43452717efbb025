"""Feature vectors of painted pixels, computed window by window around the annotations.

Only windows that hold sampled annotated pixels are read and run through the frozen encoder,
each with ``context`` pixels around it, aligned to the network stride as the prediction
engine's tiles are (so a pixel's features here equal those of a tiled prediction up to the
blending margin). Memory is bounded by one window's activations plus the sampled vectors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..errors import SemSegError
from ..io import ImageSource
from ..normalize import Normalization
from ..sampling import AnnotationIndex
from ..tiling import round_up
from .net import FeatureHeadNet

BlockKey = tuple[int, int, int, int]  # (image, plane, block row, block column)
Holdout = Callable[[np.ndarray], np.ndarray]  # rows of (image, plane, y, x) -> leave out?


@dataclass
class PixelSample:
    """Sampled painted pixels: features ``(N, F)``, classes ``(N,)`` (0-based), bookkeeping."""

    features: torch.Tensor
    labels: torch.Tensor
    windows: int
    windows_total: int
    seconds: float


@dataclass
class FeatureProgress:
    """One window of features computed."""

    done: int
    total: int
    pixels: int
    elapsed: float


def choose_pixels(index: AnnotationIndex, n_classes: int, max_pixels: int,
                  rng: np.random.Generator, holdout: Holdout | None = None
                  ) -> dict[BlockKey, np.ndarray]:
    """A class-balanced random sample of annotated pixels, grouped by block.

    Each painted class gets up to ``max_pixels // classes painted`` pixels (all of them if it
    has fewer). ``holdout`` maps rows of ``(image, plane, y, x)`` to True for pixels to leave
    out (a validation split). Returns ``{block: rows of (y, x, class - 1)}``.
    """
    points = {k: index.points[k] for k in range(1, min(n_classes, len(index.points) - 1) + 1)}
    if holdout is not None:
        points = {k: p[~np.asarray(holdout(p), bool)] for k, p in points.items()}
    present = [k for k, p in points.items() if len(p)]
    if len(present) < 2:
        raise SemSegError("paint at least two classes (labels 1..K; 0 means not painted)"
                          + (" outside the held-out part" if holdout is not None else ""))
    per_class = max(1, max_pixels // len(present))
    rows = []
    for k in present:
        pts = points[k]
        if len(pts) > per_class:
            pts = pts[rng.choice(len(pts), per_class, replace=False)]
        rows.append(np.column_stack([pts, np.full(len(pts), k - 1)]))
    chosen = np.concatenate(rows)
    b = index.block
    keys = np.column_stack([chosen[:, 0], chosen[:, 1], chosen[:, 2] // b, chosen[:, 3] // b])
    groups: dict[BlockKey, np.ndarray] = {}
    for key in np.unique(keys, axis=0):
        sel = (keys == key).all(1)
        image, plane, block_row, block_col = (int(v) for v in key)
        groups[(image, plane, block_row, block_col)] = chosen[sel][:, [2, 3, 4]]
    return groups


def window_order(groups: dict[BlockKey, np.ndarray], rng: np.random.Generator) -> list[BlockKey]:
    """Blocks in an order that covers every class early: classes take turns, each taking the
    unused block with most of its sampled pixels (ties broken at random)."""
    keys = [list(groups)[i] for i in rng.permutation(len(groups))]
    n_classes = 1 + max(int(g[:, 2].max()) for g in groups.values())
    counts = np.stack([np.bincount(groups[k][:, 2], minlength=n_classes) for k in keys])
    order: list[BlockKey] = []
    used = np.zeros(len(keys), bool)
    classes = [c for c in range(counts.shape[1]) if counts[:, c].any()]
    while not used.all():
        for c in classes:
            score = np.where(used, -1, counts[:, c])
            best = int(np.argmax(score))
            if used[best]:
                break
            used[best] = True
            order.append(keys[best])
    return order


def window_bounds(start: int, stop: int, length: int, context: int, stride: int) -> tuple[int, int]:
    """``[lo, hi)`` around ``[start, stop)`` with ``context`` pixels, ``lo`` on the stride grid."""
    lo = max(0, start - context) // stride * stride
    hi = min(length, lo + round_up(min(length, stop + context) - lo, stride))
    return lo, hi


def read_window(source: ImageSource, plane: int, rows: tuple[int, int], cols: tuple[int, int],
                stride: int) -> np.ndarray:
    """Read a window; at the image's far edges it is reflected up to a multiple of ``stride``
    (as the prediction engine pads its last tiles)."""
    block = source.read(plane, slice(*rows), slice(*cols))
    h, w = block.shape[1:]
    pad = ((0, 0), (0, round_up(h, stride) - h), (0, round_up(w, stride) - w))
    if pad[1][1] or pad[2][1]:
        mode: Literal["reflect", "symmetric"] = "reflect" if min(h, w) > 1 and pad[1][1] < h and pad[2][1] < w else "symmetric"
        block = np.pad(block, pad, mode=mode)
    return block


def block_features(net: FeatureHeadNet, source: ImageSource, norm: Normalization,
                   key: BlockKey, pixels: np.ndarray, block: int, context: int,
                   device: torch.device) -> torch.Tensor:
    """Feature vectors of ``pixels`` (rows of ``(y, x, ...)``) of one block (on the CPU)."""
    _, plane, by, bx = key
    h, w = source.plane_shape
    stride = net.stride
    rows = window_bounds(by * block, min(h, (by + 1) * block), h, context, stride)
    cols = window_bounds(bx * block, min(w, (bx + 1) * block), w, context, stride)
    x = torch.from_numpy(norm.apply(read_window(source, plane, rows, cols, stride)))[None]
    ys = torch.from_numpy(pixels[:, 0] - rows[0])
    xs = torch.from_numpy(pixels[:, 1] - cols[0])
    with torch.inference_mode():
        return net.pixel_features(x.to(device), ys.to(device), xs.to(device)).float().cpu()


def iter_pixel_features(net: FeatureHeadNet, images: list[ImageSource], norm: Normalization,
                        groups: dict[BlockKey, np.ndarray], block: int, context: int, *,
                        rng: np.random.Generator, device: torch.device,
                        deadline: float = math.inf, clock: Callable[[], float] = time.perf_counter,
                        ) -> Generator[FeatureProgress, None, PixelSample]:
    """Compute the features of the chosen pixels block by block (see :func:`window_order`).

    Stops early at ``deadline`` (a value of ``clock``) once at least two classes
    are covered; yields a :class:`FeatureProgress` per window; returns a :class:`PixelSample`.
    """
    started = clock()
    order = window_order(groups, rng)
    feats, labels, classes = [], [], set()
    for done, key in enumerate(order, 1):
        pixels = groups[key]
        feats.append(block_features(net, images[key[0]], norm, key, pixels, block, context,
                                    device))
        labels.append(torch.from_numpy(pixels[:, 2].astype(np.int64)))
        classes.update(np.unique(pixels[:, 2]).tolist())
        yield FeatureProgress(done, len(order), sum(len(f) for f in feats),
                              clock() - started)
        if clock() > deadline and len(classes) >= 2:
            break
    return PixelSample(torch.cat(feats), torch.cat(labels), len(feats), len(order),
                       clock() - started)
