"""Live preview while training: segment the field of view with the best model so far.

The region is what the canvas shows of the image (clipped to ``MAX_EDGE`` pixels around its
centre, in the current Z/T plane); it is read and segmented in a worker thread by the same
:func:`~napari_semseg.core.predict.iter_segment` as everything else, and shown in a small
Labels layer placed over that region. :class:`LivePreview` runs these previews for the Train
widget: at most one at a time, at most every :data:`PREVIEW_SECONDS`, always with the newest model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer

from ._jobs import Job, Outcome
from ._layers import (
    KEY,
    base_data,
    channel_axis_of,
    class_colormap,
    class_features,
    owned_layers,
    put_layer,
    spatial_kwargs,
)

MAX_EDGE = 768
PREVIEW_SECONDS = 4.0  # minimum time between two previews


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
    for a, i in zip(plane_axes, plane, strict=True):
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


class LivePreview(QObject):
    """Segments the field of view of ``image`` with the newest model offered, into a preview
    Labels layer over that region (one layer per image, updated in place).

    Parameters
    ----------
    viewer
        The napari viewer.
    enabled
        Whether previews during training are wanted (the widget's check box); the final preview
        (``offer(model, force=True)``) is shown regardless.
    parent
        The widget: the preview's timer dies with it, so nothing runs after it was closed.
    """

    def __init__(self, viewer: Any, enabled: Callable[[], bool],
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.enabled = enabled
        self.job: Job | None = None
        self._target: tuple[Any, Any, str] | None = None  # image layer, its source, device
        self._pending: Any = None  # the newest model not yet previewed
        self._last = 0.0
        self._later = QTimer(self)  # the next preview, when a newer model waited for this one
        self._later.setSingleShot(True)
        self._later.setInterval(int(PREVIEW_SECONDS * 1000))
        self._later.timeout.connect(self._maybe)
        self.closed = False  # the widget is closing: no more previews

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def begin(self, image: Any, source: Any, device: str, below: Any = None) -> None:
        """Preview ``image`` (read as ``source``) on ``device`` from now on; a new preview
        layer goes ``below`` that layer (the strokes stay visible over it)."""
        self._target = (image, source, device)
        self._below = below
        self._last = 0.0

    def offer(self, model: Any, force: bool = False) -> None:
        """A newer model: preview it now if allowed, else when the current preview ended."""
        self._pending = model
        if force:
            self._last = 0.0
        self._maybe(force)

    def stop(self) -> None:
        self._later.stop()
        if self.running:
            self.job.stop()

    def close(self) -> None:
        """The widget is closing: stop the running preview, wait for it, start no other."""
        self.closed = True
        self._pending = None
        self._later.stop()
        if self.job is not None:
            self.job.shutdown()

    def _maybe(self, force: bool = False) -> None:
        if self.closed or not (self.enabled() or force) or self._pending is None or \
                self.running:
            return
        if not force and time.perf_counter() - self._last < PREVIEW_SECONDS:
            return
        image = self._target[0] if self._target is not None else None
        if image is None or image not in self.viewer.layers:
            return
        model, self._pending = self._pending, None
        self._start(model)

    def _start(self, model: Any) -> None:
        from ..core.predict import iter_segment
        from ..core.settings import PredictSettings

        image, source, device = self._target
        plane, rows, cols = field_of_view(image, self.viewer, source.plane_axes,
                                          source.y_axis, source.x_axis)
        settings = PredictSettings(device=device, channel_axis=preview_channel_axis(
            image, source.channel_axis, source.plane_axes))
        axes = (source.plane_axes, plane, rows, cols, source.y_axis, source.x_axis)

        def job(should_stop: Callable[[], bool]) -> Any:
            region = read_region(image, *axes)
            result = yield from iter_segment(region, model, settings, should_stop=should_stop)
            return result.labels

        self._last = time.perf_counter()
        self.job = Job(job, lambda _e: None,
                       lambda out: self._show(out, model, plane, rows, cols)).start()

    def _show(self, outcome: Outcome, model: Any, plane: tuple[int, ...], rows: slice,
              cols: slice) -> None:
        image = self._target[0] if self._target is not None else None
        if self.closed or not outcome.ok or image is None or image not in self.viewer.layers:
            return
        labels = outcome.result
        spatial = spatial_kwargs(image, None if getattr(image, "rgb", False)
                                 else self._target[1].channel_axis)
        offsets = list(plane) + [rows.start, cols.start]
        spatial["translate"] = [t + o * s for t, o, s in
                                zip(spatial["translate"], offsets, spatial["scale"], strict=False)]
        data = labels.reshape((1,) * len(plane) + labels.shape[-2:])
        meta = model.metadata
        marker = {"complete": True, "region": [rows.start, rows.stop, cols.start, cols.stop],
                  "class_colors": list(meta.class_colors)}
        if not self._update_layer(image, data, marker, spatial["translate"]):
            self._add_layer(image, data, marker, spatial, meta)
        if self._pending is not None:
            self._later.start()

    def _update_layer(self, image: Any, data: np.ndarray, marker: dict[str, Any],
                      translate: list[float]) -> bool:
        """Update the image's preview layer in place (replacing a layer costs the viewer
        ~0.2 s); False if there is none of that shape and those colours."""
        existing = owned_layers(self.viewer, "preview", image.unique_id)
        if not existing or existing[0].data.shape != data.shape or \
                existing[0].metadata[KEY].get("class_colors") != marker["class_colors"]:
            return False
        layer = existing[0]
        layer.metadata[KEY].update(marker)
        layer.translate = translate
        layer.data = data
        return True

    def _add_layer(self, image: Any, data: np.ndarray, marker: dict[str, Any],
                   spatial: dict[str, Any], meta: Any) -> None:
        from napari.layers import Labels

        active = self.viewer.layers.selection.active
        layer = Labels(data, name=f"{image.name} preview", opacity=0.5,
                       colormap=class_colormap(meta.class_colors),
                       features=class_features(meta.class_names), metadata={KEY: marker},
                       **spatial)
        put_layer(self.viewer, layer, "preview", image.unique_id)
        below = getattr(self, "_below", None)
        layers = self.viewer.layers
        if below is not None and below in layers and layers.index(layer) > layers.index(below):
            layers.move(layers.index(layer), layers.index(below))
        if active is not None and active in self.viewer.layers:  # keep painting where one was
            self.viewer.layers.selection.active = active


__all__ = ["MAX_EDGE", "PREVIEW_SECONDS", "LivePreview", "channel_axis_of", "field_of_view",
           "preview_channel_axis", "read_region"]
