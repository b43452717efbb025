"""Result layers of a segmentation run, filled chunk by chunk.

Small results live in numpy arrays owned by the layers, and the layers are the run's sink
(:class:`~napari_semseg.core.writers.Sink`): the engine writes each finished chunk straight
into those arrays (from its writer thread; no layer is touched there), so the result is held
once. Large ones (more than ``LAZY_PIXELS``) are written by the engine into an OME-Zarr store
under ``<store>.partial``; the layers show that store lazily (zarr arrays read on demand; no dask
graph, so napari's dask cache cannot show stale chunks). Either way the layers are redrawn on
the main thread as chunks arrive. When the run completes the store is renamed by the engine and
the labels layer is swapped for the finished multiscale pyramid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.progress import ChunkResult
from ..core.writers import MemorySink, OutputLayout, SegmentationResult
from ._class_axis import name_class_steps
from ._layers import KEY, class_colormap, class_features, owned_layers, put_layer

PENDING = "not computed yet"  # what label 0 means in a result layer


class ResultLayers:
    """Create, fill and finalize the labels / probabilities / uncertainty layers of one run.

    Parameters
    ----------
    viewer
        The napari viewer.
    source_layer
        The image layer segmented (its ``unique_id`` tags the result layers).
    plane_dims, plane_shape
        Leading (Z/T) axes and (Y, X) of the output.
    meta
        The model's :class:`~napari_semseg.core.models.ModelMetadata`.
    spatial
        scale/translate/axis labels/units for a layer of the output's dimensions.
    extra
        Metadata stored in every result layer (e.g. geo tags, model description).
    """

    def __init__(self, viewer: Any, source_layer: Any, plane_dims: tuple[int, ...],
                 plane_shape: tuple[int, int], meta: Any, spatial: dict[str, Any], *,
                 probabilities: bool, uncertainty: bool, store: Path | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.viewer, self.source = viewer, source_layer
        self.source_id = str(source_layer.unique_id)
        self.plane_dims, self.plane_shape = tuple(plane_dims), tuple(plane_shape)
        self.meta, self.spatial = meta, spatial
        self.want_prob, self.want_unc = probabilities, uncertainty
        self.store = store
        self.extra = dict(extra or {})
        self.layers: dict[str, Any] = {}
        self.arrays: dict[str, Any] = {}
        self.chunks_received = 0
        self.dirty: set[str] = set()
        self.name = source_layer.name
        self.memory: MemorySink | None = None
        self.ended = False  # completed or abandoned: later chunks are stale and ignored

    # creation --------------------------------------------------------------------------------
    def _marker(self, role: str) -> dict[str, Any]:
        return {KEY: {"role": role, "source": self.source_id, "complete": False,
                      "class_names": list(self.meta.class_names),
                      "class_colors": list(self.meta.class_colors),
                      **({"store": str(self.store)} if self.store else {}), **self.extra}}

    def _class_axis_spatial(self) -> dict[str, Any]:
        sp = {k: list(v) for k, v in self.spatial.items()}
        n = len(self.plane_dims)
        sp["scale"].insert(n, 1.0)
        sp["translate"].insert(n, 0.0)
        if "axis_labels" in sp:
            sp["axis_labels"].insert(n, "class")
        if "units" in sp:
            sp["units"].insert(n, "pixel")
        return sp

    def create_in_memory(self) -> None:
        """Allocate numpy results and add the layers at once (before any chunk is ready)."""
        layout = OutputLayout(self.plane_dims, self.plane_shape, max(self.plane_shape),
                              self.meta.classes, self.want_prob, self.want_unc)
        self.memory = MemorySink(layout)
        arrays = {"labels": self.memory.labels}
        if self.memory.probabilities is not None:
            arrays["probabilities"] = self.memory.probabilities
        if self.memory.uncertainty is not None:
            arrays["uncertainty"] = self.memory.uncertainty
        self._add_layers(arrays)

    def create_from_store(self, root: Any) -> None:
        """Show the engine's partial zarr store lazily."""
        arrays = {"labels": root["0"]}
        if self.want_prob:
            arrays["probabilities"] = root["probabilities/0"]
        if self.want_unc:
            arrays["uncertainty"] = root["uncertainty/0"]
        self._add_layers(arrays)

    def _add_layers(self, arrays: dict[str, Any]) -> None:
        from napari.layers import Image, Labels

        self.arrays = arrays
        for role in ("probabilities", "uncertainty"):  # stale outputs of an earlier run
            if role not in arrays:
                for layer in owned_layers(self.viewer, role, self.source_id):
                    self.viewer.layers.remove(layer)
        if "probabilities" in arrays:
            layer = Image(arrays["probabilities"], name=f"{self.name} probabilities",
                          colormap="viridis", contrast_limits=(0, 255), visible=False,
                          metadata=self._marker("probabilities"), **self._class_axis_spatial())
            self.layers["probabilities"] = put_layer(self.viewer, layer, "probabilities",
                                                     self.source_id)
            self._name_class_steps(layer)
        if "uncertainty" in arrays:
            layer = Image(arrays["uncertainty"], name=f"{self.name} uncertainty",
                          colormap="magma", contrast_limits=(0, 255), opacity=0.7,
                          visible=False,  # shown on demand; not added over the labels
                          blending="translucent", metadata=self._marker("uncertainty"),
                          **self.spatial)
            self.layers["uncertainty"] = put_layer(self.viewer, layer, "uncertainty",
                                                   self.source_id)
        reused = self._reuse_labels(arrays["labels"])
        if reused is not None:
            self.layers["labels"] = reused
            return
        labels = Labels(arrays["labels"], name=f"{self.name} labels", opacity=0.6,
                        colormap=class_colormap(self.meta.class_colors),
                        features=class_features(self.meta.class_names, PENDING),
                        metadata=self._marker("labels"), **self.spatial)
        self.layers["labels"] = put_layer(self.viewer, labels, "labels", self.source_id)

    def _reuse_labels(self, data: Any) -> Any:
        """Re-run on the same image: refill our previous in-memory labels layer instead of
        replacing it (replacing a layer costs the viewer 0.1-0.3 s on a slow machine)."""
        old = owned_layers(self.viewer, "labels", self.source_id)
        if not old or not isinstance(data, np.ndarray):
            return None
        layer = old[0]
        if layer.multiscale or not isinstance(layer.data, np.ndarray) or \
                layer.data.shape != data.shape or layer.data.dtype != data.dtype:
            return None
        marker = self._marker("labels")
        if layer.metadata.get(KEY, {}).get("class_colors") != marker[KEY]["class_colors"]:
            layer.colormap = class_colormap(self.meta.class_colors)
        layer.features = class_features(self.meta.class_names, PENDING)
        layer.metadata[KEY] = marker[KEY]
        layer.name = f"{self.name} labels"
        layer.scale, layer.translate = self.spatial["scale"], self.spatial["translate"]
        layer.data = data
        return layer

    # the Sink protocol (in-memory results; called by the engine, off the main thread) ------
    @property
    def sink(self) -> ResultLayers | None:
        """The run's sink: these layers for in-memory results, None when the engine writes the
        store the layers show."""
        return self if self.memory is not None else None

    def done_chunks(self) -> set[tuple[int, int, int]]:
        return set()

    def write(self, chunk: ChunkResult) -> None:
        """Paint one finished chunk into the layers' arrays (the layers are redrawn later, on
        the main thread: :meth:`received`, :meth:`refresh`)."""
        if not self.ended:
            self.memory.write(chunk)

    def finish(self) -> SegmentationResult:
        return self.memory.finish()

    def abort(self) -> None:
        """Nothing to undo here: :meth:`abandon` marks the layers on the main thread."""

    # main thread -----------------------------------------------------------------------------
    def received(self, chunks: list[ChunkResult]) -> None:
        """Note chunks the engine reported finished; their layers are redrawn soon."""
        if chunks and not self.ended:
            self.chunks_received += len(chunks)
            self.dirty.update(self.layers)

    def refresh(self) -> None:
        """Redraw layers that received chunks since the last refresh."""
        for role in list(self.dirty):
            layer = self.layers.get(role)
            if layer is not None and layer in self.viewer.layers:
                layer.refresh()
        self.dirty.clear()

    # endings ---------------------------------------------------------------------------------
    def complete(self, result: Any) -> None:
        """Mark the layers complete; for a store, show the finished (renamed) pyramid."""
        self.ended = True
        if self.store is not None and getattr(result, "path", None) is not None:
            self._swap_to_final(Path(result.path))
        for layer in self.layers.values():
            if layer in self.viewer.layers:
                layer.metadata[KEY]["complete"] = True
                layer.refresh()

    def _swap_to_final(self, path: Path) -> None:
        import zarr
        from napari.layers import Image, Labels

        root = zarr.open_group(str(path), mode="r")
        levels = [d["path"] for d in root.attrs["multiscales"][0]["datasets"]]
        data = [root[lv] for lv in levels]
        old = self.layers["labels"]
        meta = dict(old.metadata)
        meta[KEY] = dict(meta[KEY], store=str(path))
        labels = Labels(data if len(data) > 1 else data[0], name=old.name, opacity=old.opacity,
                        colormap=class_colormap(self.meta.class_colors),
                        features=class_features(self.meta.class_names, PENDING), metadata=meta,
                        **self.spatial)
        self.layers["labels"] = put_layer(self.viewer, labels, "labels", self.source_id)
        for role, key in (("probabilities", "probabilities/0"), ("uncertainty", "uncertainty/0")):
            old = self.layers.get(role)
            if old is None:
                continue
            meta = dict(old.metadata)
            meta[KEY] = dict(meta[KEY], store=str(path))
            kwargs = self._class_axis_spatial() if role == "probabilities" else self.spatial
            layer = Image(root[key], name=old.name, colormap=old.colormap.name,
                          contrast_limits=(0, 255), visible=old.visible, opacity=old.opacity,
                          blending=old.blending, metadata=meta, **kwargs)
            self.layers[role] = put_layer(self.viewer, layer, role, self.source_id)
            if role == "probabilities":
                self._name_class_steps(layer)

    def _name_class_steps(self, layer: Any) -> None:
        name_class_steps(self.viewer, layer, len(self.plane_dims), self.meta.class_names,
                         f"{self.name} probabilities")

    def abandon(self) -> None:
        """After a cancel or an error: drop empty layers; mark partial ones as incomplete."""
        self.ended = True
        for layer in list(self.layers.values()):
            shown = layer in self.viewer.layers  # not when the viewer closed (layers cleared)
            if self.chunks_received == 0:
                if shown:
                    self.viewer.layers.remove(layer)
                continue
            layer.metadata[KEY]["complete"] = False
            if not layer.name.endswith("(incomplete)"):
                layer.name = f"{layer.name} (incomplete)"
            if shown:
                layer.refresh()
        if self.chunks_received == 0:
            self.layers.clear()
