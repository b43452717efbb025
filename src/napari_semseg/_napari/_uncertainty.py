"""The Train widget's "Next region to paint": an uncertainty layer and a camera jump.

:class:`NextRegionPanel` (a button and a one-line note) segments, with the newest model (the
last trained one, or during training the newest epoch's), the image's current plane when it is
small (at most :data:`WHOLE_PLANE_PIXELS`) or else the field of view, asking for class
probabilities and the margin uncertainty ``1 - (p1 - p2)``; the map is shown as a hidden
"uncertainty" image layer (translucent, under the annotations, so strokes stay visible) over
that region. Each click then asks :func:`napari_semseg.core.next_region.next_regions` for the
most uncertain box with no painted pixel, at a distance from the boxes shown before, centres
the camera on it and names the two classes the model confuses there. A new model (or image)
recomputes the map; the regions already visited are then forgotten.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..core.next_region import Region, next_regions
from ._jobs import Job, Outcome
from ._layers import KEY, base_data, put_layer, spatial_kwargs
from ._preview import field_of_view, preview_channel_axis, read_region

WHOLE_PLANE_PIXELS = 2048 * 2048
ROLE = "paint guide"


def viewer_camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


class _UncertaintyMap:
    """The margin map of one model on one region of one image layer."""

    def __init__(self, model: Any, image: Any, channel_axis: int | None, plane: tuple[int, ...],
                 rows: slice, cols: slice, uncertainty: np.ndarray,
                 probabilities: np.ndarray) -> None:
        self.model, self.image, self.channel_axis = model, image, channel_axis
        self.plane, self.rows, self.cols = plane, rows, cols
        self.uncertainty, self.probabilities = uncertainty, probabilities
        self.visited: list[tuple[float, float]] = []  # centres shown, in region pixels


class NextRegionPanel(QWidget):
    """"Next region to paint" button with its note, for the Train widget.

    Parameters
    ----------
    viewer
        The napari viewer.
    inputs
        The Train widget's form (its image and annotation layers and device).
    model
        Returns the newest model (None before any training).
    """

    def __init__(self, viewer: Any, inputs: Any, model: Callable[[], Any]) -> None:
        super().__init__()
        self.viewer, self.inputs, self._model = viewer, inputs, model
        self.latest: Any = None  # newest model seen during training (see follow())
        self.map: _UncertaintyMap | None = None
        self.job: Job | None = None
        self.region: Region | None = None  # the last region shown (in region pixels)
        self.button = QPushButton("Next region to paint")
        self.button.setObjectName("next_region")
        self.button.setToolTip("move the view to the place without strokes where the model is "
                               "least sure (another place on each click); the uncertainty layer "
                               "(hidden) shows the whole map")
        self.note = QLabel("")
        self.note.setObjectName("next_region_note")
        self.note.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.note)
        self.button.clicked.connect(self.next_region)

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def stop(self) -> None:
        """Stop computing the map (the widget is closing)."""
        if self.running:
            self.job.stop()

    def follow(self, preview: Any) -> None:
        """Also use the models offered to the live preview during training (epoch ends)."""
        offer = preview.offer

        def offered(model: Any, force: bool = False) -> None:
            self.latest = model
            offer(model, force)

        preview.offer = offered

    def model(self) -> Any:
        return self.latest if self.latest is not None else self._model()

    # the button ------------------------------------------------------------------------------
    def next_region(self) -> None:
        """Jump to the next region (computing the uncertainty map first if needed)."""
        if self.running:
            return
        model, image = self.model(), self.inputs.image.layer()
        if model is None or image is None:
            self.note.setText("train a model first: the next region is where it is least sure")
            return
        current = self.map
        if current is not None and current.model is model and current.image is image:
            self._jump()
            return
        self._compute(model, image)

    def _compute(self, model: Any, image: Any) -> None:
        from ..core.predict import iter_segment
        from ..core.settings import PredictSettings
        from ._layers import layer_source

        source = layer_source(image)
        h, w = source.plane_shape
        plane, rows, cols = field_of_view(image, self.viewer, source.plane_axes, source.y_axis,
                                          source.x_axis)
        if h * w <= WHOLE_PLANE_PIXELS:
            rows, cols = slice(0, h), slice(0, w)
        settings = PredictSettings(device=self.inputs.device.device, probabilities=True,
                                   uncertainty="margin", channel_axis=preview_channel_axis(
                                       image, source.channel_axis, source.plane_axes))
        axes = (source.plane_axes, plane, rows, cols, source.y_axis, source.x_axis)

        def job(should_stop: Callable[[], bool]) -> Any:
            pixels = read_region(image, *axes)
            result = yield from iter_segment(pixels, model, settings, should_stop=should_stop)
            return result.uncertainty, result.probabilities

        self.note.setText("computing where the model is unsure…")
        self.button.setEnabled(False)
        self.job = Job(job, lambda _e: None,
                       lambda out: self._computed(out, model, image, source, plane, rows, cols))
        self.job.start()

    def _computed(self, outcome: Outcome, model: Any, image: Any, source: Any,
                  plane: tuple[int, ...], rows: slice, cols: slice) -> None:
        self.button.setEnabled(True)
        if not outcome.ok:
            self.note.setText("stopped" if outcome.cancelled else
                              f"could not compute the uncertainty: {outcome.error}")
            return
        unc, probs = (np.asarray(a) for a in outcome.result)
        self.map = _UncertaintyMap(model, image, source.channel_axis, plane, rows, cols, unc,
                                   probs)
        self._show_layer()
        self._jump()

    # the layer and the camera ------------------------------------------------------------------
    def _spatial(self) -> dict[str, Any]:
        """scale/translate of the map's region (the image's, shifted to the region)."""
        m = self.map
        image = m.image
        spatial = spatial_kwargs(image, None if getattr(image, "rgb", False) else m.channel_axis)
        offsets = [0] * len(m.plane) + [m.rows.start, m.cols.start]
        spatial["translate"] = [t + o * s for t, o, s in
                                zip(spatial["translate"], offsets, spatial["scale"], strict=False)]
        return spatial

    def _show_layer(self) -> None:
        from napari.layers import Image

        m = self.map
        data = m.uncertainty.reshape((1,) * len(m.plane) + m.uncertainty.shape[-2:])
        layer = Image(data, name=f"{m.image.name} uncertainty (margin)", colormap="magma",
                      contrast_limits=(0, 255), opacity=0.6, blending="translucent",
                      visible=False, metadata={KEY: {"kind": "margin"}},
                      **self._spatial())
        annotations = self.inputs.annotations.layer()
        active = self.viewer.layers.selection.active
        put_layer(self.viewer, layer, ROLE, m.image.unique_id)
        if annotations is not None and annotations in self.viewer.layers:
            # under the annotations, so strokes stay on top of it
            here, there = self.viewer.layers.index(layer), self.viewer.layers.index(annotations)
            if here > there:
                self.viewer.layers.move(here, there)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

    def _painted(self) -> Any:
        m, layer = self.map, self.inputs.annotations.layer()
        if layer is None:
            return None
        data = base_data(layer)
        index = tuple(m.plane) + (m.rows, m.cols)
        if data.ndim != len(index):
            return None
        return np.asarray(data[index])

    def _jump(self) -> None:
        m = self.map
        side = int(np.clip(min(m.uncertainty.shape[-2:]) // 6, 32, 256))
        found = next_regions(m.uncertainty, self._painted(), probabilities=m.probabilities,
                             size=side, count=1, avoid=m.visited)
        if not found:
            self.note.setText("every uncertain place nearby is painted: train again, or look "
                              "elsewhere and click again")
            return
        region = self.region = found[0]
        m.visited.append(region.center)
        self._move_camera(region)
        names = list(m.model.metadata.class_names)
        confused = " and ".join(names[k - 1] for k in region.classes if k <= len(names))
        self.note.setText(f"paint here: the model hesitates between {confused} "
                          f"(uncertainty {region.score:.2f})")

    def _move_camera(self, region: Region) -> None:
        spatial = self._spatial()
        scale = spatial["scale"]
        camera = viewer_camera(self.viewer)
        camera.center = self.world_center()
        y0, x0, y1, x1 = region.box
        extent = max((y1 - y0) * abs(scale[-2]), (x1 - x0) * abs(scale[-1]))
        canvas = getattr(self.viewer, "_canvas_size", (600, 800))
        camera.zoom = max(1e-3, min(canvas) / (3.0 * max(extent, 1e-9)))

    def world_center(self) -> tuple[float, float] | None:
        """World coordinates of the last region's centre (None before the first jump)."""
        if self.region is None or self.map is None:
            return None
        spatial = self._spatial()
        cy, cx = self.region.center
        return (spatial["translate"][-2] + cy * spatial["scale"][-2],
                spatial["translate"][-1] + cx * spatial["scale"][-1])
