"""Where to paint next: the most uncertain regions not yet painted, spread over the image.

:func:`next_regions` reads an uncertainty map (any 2D array: numpy, dask, zarr; uint8 0..255 as
:func:`~napari_semseg.segment` writes it, or floats in [0, 1]) band by band, averaged over
``factor x factor`` cells so that at most ``max_cells`` cells lie along a side (a gigapixel
map is never held at full resolution), together with the annotations (any cell holding a
painted pixel counts as painted). Every box of ``size`` pixels gets its mean uncertainty; boxes
touching a painted cell are excluded; boxes are then picked greedily, best first, each at least
``min_distance`` pixels from the previous picks and from ``avoid`` (non-maximum suppression), so
successive regions go elsewhere. With class probabilities, each region names the two classes of
highest mean probability there: the ones the model confuses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SemSegError

MAX_CELLS = 512
BAND_PIXELS = 1 << 24  # pixels read at once from the maps


@dataclass(frozen=True)
class Region:
    """A region to paint: ``box`` is ``(y0, x0, y1, x1)`` in pixels of the map."""

    box: tuple[int, int, int, int]
    score: float  # mean uncertainty in the box, 0..1
    classes: tuple[int, ...] = ()  # the two classes (1..K) most probable there, best first

    @property
    def center(self) -> tuple[float, float]:
        y0, x0, y1, x1 = self.box
        return (y0 + y1) / 2, (x0 + x1) / 2


def _as_numpy(block: Any) -> np.ndarray:
    return np.asarray(block.compute() if hasattr(block, "compute") else block)


def cell_means(array: Any, factor: int, reduce: str = "mean") -> np.ndarray:
    """``array`` (2D) reduced over ``factor x factor`` cells (mean or max), read by bands."""
    h, w = array.shape
    gh, gw = math.ceil(h / factor), math.ceil(w / factor)
    out = np.zeros((gh, gw), np.float32)
    rows_per_band = max(1, BAND_PIXELS // max(1, w * factor)) * factor
    for y0 in range(0, h, rows_per_band):
        band = _as_numpy(array[y0:min(h, y0 + rows_per_band)]).astype(np.float32, copy=False)
        bh = band.shape[0]
        ph, pw = (-bh) % factor, (-w) % factor
        fill = np.nan if reduce == "mean" else 0
        padded = np.pad(band, ((0, ph), (0, pw)), constant_values=fill)
        cells = padded.reshape(padded.shape[0] // factor, factor, -1, factor)
        reduced = np.nanmean(cells, axis=(1, 3)) if reduce == "mean" else cells.max(axis=(1, 3))
        out[y0 // factor:y0 // factor + reduced.shape[0]] = reduced
    return out


def _box_sums(grid: np.ndarray, side: int) -> np.ndarray:
    """Sums over every ``side x side`` window (valid positions), from an integral image."""
    s = np.pad(grid.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return s[side:, side:] - s[:-side, side:] - s[side:, :-side] + s[:-side, :-side]


def _check(uncertainty: Any, annotations: Any) -> None:
    if len(uncertainty.shape) != 2:
        raise SemSegError(f"the uncertainty map must be 2D (one plane), got shape "
                          f"{tuple(uncertainty.shape)}")
    if annotations is not None and tuple(annotations.shape) != tuple(uncertainty.shape):
        raise SemSegError(f"annotations of shape {tuple(annotations.shape)} do not match the "
                          f"uncertainty map {tuple(uncertainty.shape)}")


def _scale(uncertainty: Any) -> float:
    dtype = np.dtype(getattr(uncertainty, "dtype", np.float32))
    return 255.0 if dtype == np.uint8 else 1.0


def next_regions(uncertainty: Any, annotations: Any = None, *, probabilities: Any = None,
                 size: int = 64, count: int = 3, min_distance: float | None = None,
                 avoid: Sequence[tuple[float, float]] = (), max_cells: int = MAX_CELLS
                 ) -> list[Region]:
    """The ``count`` most uncertain unpainted boxes of ``size`` pixels, spatially diverse.

    Parameters
    ----------
    uncertainty
        2D map (uint8 0..255 or float 0..1), read lazily by bands.
    annotations
        Labels of the same shape (0 = not painted), or None.
    probabilities
        Optional ``(K, H, W)`` class probabilities (uint8 or float): each region then names its
        two most probable classes (only the boxes are read).
    size
        Box edge in pixels of the map.
    count
        How many regions at most (fewer when fewer unpainted places are left).
    min_distance
        Least distance in pixels between the centres of two picks, and from ``avoid``
        (default: twice ``size``).
    avoid
        Centres ``(y, x)`` picked before (e.g. by earlier clicks), to go elsewhere.
    max_cells
        The map is averaged into at most this many cells along its longer side.

    Returns
    -------
    list of Region
        Best first.
    """
    _check(uncertainty, annotations)
    h, w = uncertainty.shape
    factor = max(1, math.ceil(max(h, w) / max_cells))
    grid = cell_means(uncertainty, factor) / _scale(uncertainty)
    painted = np.zeros(grid.shape, bool) if annotations is None else \
        cell_means(annotations, factor, reduce="max") > 0
    side = max(1, min(round(size / factor), *grid.shape))
    scores = _box_sums(np.nan_to_num(grid), side) / side ** 2
    scores[_box_sums(painted, side) > 0] = -np.inf
    distance = (2.0 * size if min_distance is None else min_distance) / factor
    picks = _suppress(scores, side, count, distance, [(y / factor, x / factor) for y, x in avoid])
    regions = []
    for gy, gx in picks:
        box = (gy * factor, gx * factor, min(h, (gy + side) * factor),
               min(w, (gx + side) * factor))
        classes = confused_classes(probabilities, box) if probabilities is not None else ()
        regions.append(Region(box, float(scores[gy, gx]), classes))
    return regions


def _suppress(scores: np.ndarray, side: int, count: int, distance: float,
              avoid: list[tuple[float, float]]) -> list[tuple[int, int]]:
    """Greedy picks of the best windows whose centres keep ``distance`` from each other."""
    ys, xs = np.mgrid[:scores.shape[0], :scores.shape[1]]
    cy, cx = ys + side / 2, xs + side / 2
    work = scores.copy()
    for ay, ax in avoid:
        work[(cy - ay) ** 2 + (cx - ax) ** 2 < distance ** 2] = -np.inf
    picks: list[tuple[int, int]] = []
    while len(picks) < count:
        flat = int(np.argmax(work))
        gy, gx = divmod(flat, work.shape[1])
        if not np.isfinite(work[gy, gx]):
            break
        picks.append((gy, gx))
        py, px = gy + side / 2, gx + side / 2
        work[(cy - py) ** 2 + (cx - px) ** 2 < max(distance, 1.0) ** 2] = -np.inf
    return picks


def confused_classes(probabilities: Any, box: tuple[int, int, int, int]) -> tuple[int, ...]:
    """The two classes (1..K) of highest mean probability in ``box`` of ``(K, H, W)``."""
    y0, x0, y1, x1 = box
    block = _as_numpy(probabilities[:, y0:y1, x0:x1]).astype(np.float64)
    means = block.reshape(block.shape[0], -1).mean(axis=1)
    order = np.argsort(-means, kind="stable")[:2]
    return tuple(int(k) + 1 for k in order)
