"""Where finished image chunks go: memory, a zarr store or a tiled BigTIFF.

The label sinks of :mod:`napari_semseg.core.writers` hold class labels (uint8 labels, nearest
pyramids, colour tables); a synthesized image has channels and the training images' dtype, so
it gets these sinks, which follow the same rules and reuse the same helpers: output names are
checked before any work (:func:`~napari_semseg.core.writers.check_output`), chunks go to a
temporary ``<name>.partial`` that is renamed only when complete, and a cancelled or failed run
removes it, so nothing under the output name ever looks finished when it is not.

Layout: ``plane_dims + (Y, X)`` for one channel, ``plane_dims + (Y, X, C)`` for several
(channels last, as RGB images usually are; napari shows them as RGB).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..writers import _remove, output_kind


@dataclass
class ImageChunk:
    """One finished chunk: ``image`` is ``(h, w)`` or ``(h, w, C)`` in the output dtype."""

    plane: int
    region: tuple[slice, slice]
    image: np.ndarray


@dataclass
class ImageLayout:
    """Shape and type of a synthesized image."""

    plane_dims: tuple[int, ...]
    plane_shape: tuple[int, int]
    channels: int
    dtype: np.dtype
    chunk: int

    @property
    def shape(self) -> tuple[int, ...]:
        tail = (self.channels,) if self.channels > 1 else ()
        return self.plane_dims + self.plane_shape + tail

    @property
    def chunks(self) -> tuple[int, ...]:
        tail = (self.channels,) if self.channels > 1 else ()
        return (1,) * len(self.plane_dims) + (self.chunk, self.chunk) + tail

    def index(self, chunk: ImageChunk) -> tuple[Any, ...]:
        plane = (tuple(int(i) for i in np.unravel_index(chunk.plane, self.plane_dims))
                 if self.plane_dims else ())
        return plane + chunk.region


@dataclass
class SynthesisResult:
    """What :func:`napari_semseg.synthesize` returns: the image (numpy in memory, a lazily
    opened array for file outputs), its path and what was recorded about the run."""

    image: Any
    path: Path | None = None
    metadata: dict[str, Any] | None = None


class MemoryImageSink:
    """Collect the image in one numpy array of the output dtype."""

    def __init__(self, layout: ImageLayout) -> None:
        self.layout = layout
        self.image = np.zeros(layout.shape, layout.dtype)

    def write(self, chunk: ImageChunk) -> None:
        self.image[self.layout.index(chunk)] = chunk.image

    def finish(self) -> SynthesisResult:
        return SynthesisResult(self.image)

    def abort(self) -> None:
        pass


class StreamSink:
    """Keep nothing: the chunks reach the caller only through the progress events (a viewer
    paints them into its own layer); the result has no image."""

    def write(self, chunk: ImageChunk) -> None:
        pass

    def finish(self) -> SynthesisResult:
        return SynthesisResult(None)

    def abort(self) -> None:
        pass


class ZarrImageSink:
    """Write chunks into a zarr group (array ``0``) under ``<path>.partial``; rename at the end."""

    def __init__(self, path: Path, layout: ImageLayout, info: dict[str, Any]) -> None:
        import zarr

        self.path, self.layout, self.info = Path(path), layout, info
        self.partial = self.path.with_name(self.path.name + ".partial")
        _remove(self.partial)
        self.root = zarr.open_group(str(self.partial), mode="w", zarr_format=2)
        self.root.attrs["napari_semseg"] = {**info, "complete": False}
        self.array = self.root.create_array("0", shape=layout.shape, dtype=layout.dtype,
                                            chunks=layout.chunks, fill_value=0)

    def write(self, chunk: ImageChunk) -> None:
        self.array[self.layout.index(chunk)] = chunk.image

    def finish(self) -> SynthesisResult:
        import zarr

        self.root.attrs["napari_semseg"] = {**self.info, "complete": True}
        if self.path.exists():
            _remove(self.path)
        os.replace(self.partial, self.path)
        root = zarr.open_group(str(self.path), mode="r")
        return SynthesisResult(root["0"], self.path, dict(self.info))

    def abort(self) -> None:
        _remove(self.partial)


def _image_tiles(arr: Any, tile: int, channels: int):
    """Full-size TIFF tiles of ``arr`` (``(..., Y, X)`` or ``(..., Y, X, C)``), row-major."""
    spatial = arr.shape[-3:-1] if channels > 1 else arr.shape[-2:]
    lead = arr.shape[:-3] if channels > 1 else arr.shape[:-2]
    h, w = spatial
    for idx in np.ndindex(*lead):
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                block = np.asarray(arr[idx + (slice(y, y + tile), slice(x, x + tile))])
                pad = [(0, tile - block.shape[0]), (0, tile - block.shape[1])]
                if pad[0][1] or pad[1][1]:
                    block = np.pad(block, pad + [(0, 0)] * (block.ndim - 2))
                yield block


class TiffImageSink(ZarrImageSink):
    """Write chunks to a temporary zarr, then stream it into a tiled BigTIFF (RGB for three
    channels, GeoTIFF tags of the label map kept)."""

    TIFF_TILE = 256

    def __init__(self, path: Path, layout: ImageLayout, info: dict[str, Any],
                 geo_tags: list[tuple] | None = None) -> None:
        self.tiff_path = Path(path)
        self.geo_tags = geo_tags or []
        # chunks go to <name>.zarr.partial (writers.partial_path), streamed to TIFF at the end
        super().__init__(self.tiff_path.with_name(self.tiff_path.name + ".zarr"), layout, info)

    def finish(self) -> SynthesisResult:
        import tifffile
        import zarr

        lay = self.layout
        tmp = self.tiff_path.with_name(self.tiff_path.name + ".partial")
        photometric = "rgb" if lay.channels == 3 else "minisblack"
        axes = "TZ"[-len(lay.plane_dims):] if lay.plane_dims else ""
        axes += "YXS" if lay.channels > 1 else "YX"
        tifffile.imwrite(tmp, _image_tiles(self.array, self.TIFF_TILE, lay.channels),
                         shape=lay.shape, dtype=lay.dtype, tile=(self.TIFF_TILE, self.TIFF_TILE),
                         bigtiff=True, compression="zlib", photometric=photometric,
                         planarconfig="contig" if lay.channels > 1 else None,
                         extratags=self.geo_tags, metadata={"axes": axes})
        os.replace(tmp, self.tiff_path)
        _remove(self.partial)
        image = zarr.open(tifffile.imread(self.tiff_path, aszarr=True), mode="r")
        return SynthesisResult(image, self.tiff_path, dict(self.info))

    def abort(self) -> None:
        super().abort()
        _remove(self.tiff_path.with_name(self.tiff_path.name + ".partial"))


def make_image_sink(output: Any, layout: ImageLayout, info: dict[str, Any], *,
                    geo_tags: list[tuple] | None = None
                    ) -> MemoryImageSink | ZarrImageSink | TiffImageSink:
    """The sink for ``output``: None (memory), a ``.zarr`` path or a ``.tif`` path."""
    if output is None:
        return MemoryImageSink(layout)
    path = Path(output)
    if output_kind(path) == "zarr":
        return ZarrImageSink(path, layout, info)
    return TiffImageSink(path, layout, info, geo_tags)
