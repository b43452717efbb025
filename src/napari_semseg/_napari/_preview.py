"""Live preview while training: segment the field of view with the best model so far.

The region is what the canvas shows of the image (clipped to ``MAX_EDGE`` pixels around its
centre, in the current Z/T plane); it is read and segmented in a worker thread by the same
:func:`~napari_semseg.core.predict.iter_segment` as everything else, and shown in a small
Labels layer placed over that region.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._layers import base_data, channel_axis_of

MAX_EDGE = 768


def field_of_view(layer: Any, viewer: Any, plane_axes: tuple[int, ...],
                  y_axis: int, x_axis: int) -> tuple[tuple[int, ...], slice, slice]:
    """``(plane index, rows, cols)`` of the image data visible on the canvas (clipped)."""
    data = base_data(layer)
    shape = data.shape
    h, w = shape[y_axis], shape[x_axis]
    corners = np.asarray(layer.corner_pixels, float)
    ndim = corners.shape[1]
    if getattr(layer, "multiscale", False):
        factor = np.asarray(layer.downsample_factors[layer.data_level], float)
        corners = corners * factor
    # layer axes exclude the RGB channel axis; they map onto data axes in order
    ly, lx = (y_axis, x_axis) if ndim == data.ndim else (ndim - 2, ndim - 1)
    (y0, x0), (y1, x1) = corners[0, [ly, lx]], corners[1, [ly, lx]]
    if y1 <= y0 or x1 <= x0:  # never drawn: take the centre of the plane
        y0, y1, x0, x1 = 0, h, 0, w
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    hh, hw = min(y1 - y0, MAX_EDGE) / 2, min(x1 - x0, MAX_EDGE) / 2
    r0, r1 = int(max(0, cy - hh)), int(min(h, cy + hh))
    c0, c1 = int(max(0, cx - hw)), int(min(w, cx + hw))
    if r1 - r0 < 32 or c1 - c0 < 32:  # too small to be useful: grow to 64 px
        r0, r1 = max(0, int(cy) - 32), min(h, int(cy) + 32)
        c0, c1 = max(0, int(cx) - 32), min(w, int(cx) + 32)
    point = layer.world_to_data(viewer.dims.point) if plane_axes else ()
    plane = tuple(int(np.clip(round(point[a]), 0, shape[a] - 1)) for a in plane_axes)
    return plane, slice(r0, r1), slice(c0, c1)


def read_region(layer: Any, plane_axes: tuple[int, ...], plane: tuple[int, ...],
                rows: slice, cols: slice, y_axis: int, x_axis: int) -> np.ndarray:
    """The pixels of one region (all channels), as numpy, in the layer's axis order."""
    data = base_data(layer)
    index: list[Any] = [slice(None)] * data.ndim
    for a, i in zip(plane_axes, plane):
        index[a] = i
    index[y_axis], index[x_axis] = rows, cols
    block = data[tuple(index)]
    return np.asarray(block.compute() if hasattr(block, "compute") else block)


def preview_channel_axis(layer: Any, source_channel_axis: int | None,
                         plane_axes: tuple[int, ...]) -> int | None:
    """Channel axis of a region read by :func:`read_region` (plane axes are dropped)."""
    if getattr(layer, "rgb", False):
        return -1
    if source_channel_axis is None:
        return None
    return source_channel_axis - sum(1 for a in plane_axes if a < source_channel_axis)


__all__ = ["MAX_EDGE", "field_of_view", "read_region", "preview_channel_axis", "channel_axis_of"]
