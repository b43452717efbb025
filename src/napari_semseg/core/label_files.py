"""Save a label image (any array: numpy, dask, zarr; larger than memory) as a tiled BigTIFF or
an OME-Zarr with a pyramid, with class names and colours, pixel size and position, and GeoTIFF
tags. The same writers as a segmentation run's output (:mod:`.writers`), fed block by block;
the napari writer is a thin adapter over these functions.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .constants import METADATA_KEY
from .progress import ChunkResult
from .writers import (OutputLayout, Placement, ZarrSink, jsonable, tiff_axes,
                      write_tiled_tiff)

BLOCK = 1024  # pixels read at a time (and the OME-Zarr chunk edge)


@dataclass
class LabelsInfo:
    """What travels with a label image besides its pixels (each entry optional).

    ``scale`` and ``translate`` have one value per axis of the labels; ``geo_tags`` are GeoTIFF
    tags as ``(code, dtype, count, value[, writeonce])``.
    """

    class_names: Sequence[str] = ()
    class_colors: Sequence[str] = ()
    geo_tags: list | None = None
    scale: Sequence[float] | None = None
    translate: Sequence[float] | None = None
    name: str = "labels"


def write_labels_tiff(path: str | Path, labels: Any, info: LabelsInfo) -> Path:
    """Tiled, compressed BigTIFF, tile by tile; GeoTIFF tags and class info (JSON image
    description, read back by the napari reader) kept."""
    description = {METADATA_KEY: {
        "kind": "labels", "class_names": list(info.class_names),
        "class_colors": list(info.class_colors),
        "scale": jsonable(list(info.scale or [])) or None,
        "translate": jsonable(list(info.translate or [])) or None}}
    axes = tiff_axes(labels.ndim - 2) + "YX"
    return write_tiled_tiff(Path(path), labels, axes, geo_tags=info.geo_tags,
                            description=description)


def _blocks(labels: Any, layout: OutputLayout) -> Iterator[ChunkResult]:
    """The label image as chunks of ``layout.chunk`` pixels, plane by plane (read one by one)."""
    h, w = layout.plane_shape
    n_planes = int(np.prod(layout.plane_dims)) if layout.plane_dims else 1
    for p in range(n_planes):
        idx = layout.plane_index(p)
        for y in range(0, h, layout.chunk):
            for x in range(0, w, layout.chunk):
                region = (slice(y, min(h, y + layout.chunk)), slice(x, min(w, x + layout.chunk)))
                yield ChunkResult(p, region, np.asarray(labels[idx + region]))


def write_labels_zarr(path: str | Path, labels: Any, info: LabelsInfo,
                      chunk: int = BLOCK) -> Path:
    """OME-Zarr (NGFF 0.4, zarr format 2) labels image with a nearest-neighbour pyramid,
    ``image-label`` colours and names, scale and translation; written under ``<path>.partial``
    and renamed when complete (an existing ``path`` is replaced)."""
    shape = tuple(int(s) for s in labels.shape)
    layout = OutputLayout(shape[:-2], (shape[-2], shape[-1]), chunk, max(1, len(info.class_names)),
                          False, False, labels_dtype=np.dtype(labels.dtype))
    meta = jsonable({"class_names": list(info.class_names),
                     "class_colors": list(info.class_colors), "geo_tags": info.geo_tags})
    placement = Placement(info.name,
                          tuple(float(s) for s in info.scale) if info.scale else None,
                          tuple(float(t) for t in info.translate) if info.translate else None)
    sink = ZarrSink(Path(path), layout, meta, overwrite=True, placement=placement)
    try:
        for block in _blocks(labels, layout):
            sink.write(block)
        written = sink.finish().path
        if written is None:
            raise RuntimeError("a zarr sink always reports the path it wrote")
        return written
    except BaseException:
        shutil.rmtree(sink.partial, ignore_errors=True)  # nothing half-written stays behind
        raise
