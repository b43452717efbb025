"""Label maps as generator input: open lazily, check before any work, one-hot by window.

A label map holds 0 (unconstrained: the generator chooses) or a class 1..K of the generator.
It is a 2D integer image or a stack of them (synthesized plane by plane).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SemSegError
from ..io import ImageSource, open_array

BAND_PIXELS = 2**24  # pixels read at once while scanning a label map's values


def open_label_map(label_map: Any) -> ImageSource:
    """Open a label map (array, lazy array, path or ImageSource) without reading its pixels."""
    if isinstance(label_map, ImageSource):
        return label_map
    path, geo = None, None
    if isinstance(label_map, (str, os.PathLike)):
        path = Path(label_map)
        label_map, geo = open_array(path)
    if not hasattr(label_map, "shape") or not hasattr(label_map, "dtype"):
        label_map = np.asarray(label_map)
    shape = tuple(int(s) for s in label_map.shape)
    what = str(path) if path else "the label map"
    dtype = np.dtype(label_map.dtype)
    if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise SemSegError(f"{what} has pixel type {dtype}; give integer labels (0 = "
                          "unconstrained, 1..K = classes), e.g. labels.astype(numpy.uint8)")
    if len(shape) < 2 or any(s == 0 for s in shape):
        raise SemSegError(f"{what} has shape {shape}; give a 2D label image (or a stack of them)")
    if len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4:
        raise SemSegError(f"{what} has shape {shape}, which looks like a colour image; give a "
                          "label image with one class value (0..K) per pixel")
    if min(shape[-2:]) < 2:
        raise SemSegError(f"{what} planes are {shape[-2]}x{shape[-1]} pixels; need at least 2x2")
    return ImageSource(label_map, None, path, geo)


def check_label_values(source: ImageSource, classes: int, names: list[str] | None = None
                       ) -> int:
    """Scan the label map band by band; raise if a value is outside 0..``classes``.

    Returns the largest value found. Reading a uint8 map is much faster than synthesizing it,
    so the whole map is scanned before any work starts.
    """
    h, w = source.plane_shape
    band = max(1, BAND_PIXELS // max(w, 1))
    top = 0
    for p in range(source.n_planes):
        for y in range(0, h, band):
            block = source.read(p, slice(y, min(h, y + band)), slice(0, w))
            lo, hi = int(block.min()), int(block.max())
            if lo < 0:
                raise SemSegError(f"the label map holds negative values ({lo}); use 0 for "
                                  "unconstrained pixels and 1..K for classes")
            top = max(top, hi)
            if top > classes:
                known = f" ({', '.join(names)})" if names else ""
                raise SemSegError(f"the label map uses class {top} but the generator knows "
                                  f"classes 1..{classes}{known}; relabel the map or train a "
                                  "generator with these classes")
    return top


def read_label_tile(source: ImageSource, plane: int, rows: slice, cols: slice,
                    shape: tuple[int, int], classes: int) -> np.ndarray:
    """Read a window of labels as int64 ``(h, w)`` of ``shape``; the part beyond the map
    (less than a stride, or a whole tile larger than the map) is mirrored, as a whole-map pass
    pads it."""
    block = source.read(plane, rows, cols)[0]
    pad = ((0, shape[0] - block.shape[0]), (0, shape[1] - block.shape[1]))
    if pad[0][1] or pad[1][1]:
        mode = "reflect" if min(block.shape) > 1 else "edge"
        if mode == "reflect" and (pad[0][1] >= block.shape[0] or pad[1][1] >= block.shape[1]):
            mode = "symmetric"
        block = np.pad(block, pad, mode=mode)  # type: ignore[call-overload]
    return np.clip(block.astype(np.int64, copy=False), 0, classes)
