"""Where finished chunks go: memory, OME-Zarr (with a pyramid) or a tiled BigTIFF.

File outputs are written under a temporary ``<name>.partial`` and renamed only when complete,
so a cancelled, failed or killed run never leaves an output that looks finished. The partial
store records every finished chunk (one marker file per chunk), which is what ``resume`` and the
cluster mode use to compute only missing chunks.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SemSegError
from .progress import ChunkResult

DONE_DIR = "semseg_done"
# Pyramid levels whose chunks (the output chunk halved per level) are at least this large are
# written with every finished chunk (by whichever process finished it); coarser levels are
# built from them when the run completes.
MIN_INCREMENTAL_CHUNK = 256
ZARR_SUFFIXES = (".zarr", ".ome.zarr")
TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")


@dataclass
class OutputLayout:
    """Shapes and types of everything a segmentation run writes."""

    plane_dims: tuple[int, ...]
    plane_shape: tuple[int, int]
    chunk: int
    classes: int
    probabilities: bool
    uncertainty: bool

    @property
    def label_dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.classes < 256 else np.uint16)

    @property
    def labels_shape(self) -> tuple[int, ...]:
        return self.plane_dims + self.plane_shape

    @property
    def probabilities_shape(self) -> tuple[int, ...]:
        return self.plane_dims + (self.classes,) + self.plane_shape

    def plane_index(self, plane: int) -> tuple[int, ...]:
        if not self.plane_dims:
            return ()
        return tuple(int(i) for i in np.unravel_index(plane, self.plane_dims))


@dataclass
class SegmentationResult:
    """What :func:`napari_semseg.segment` returns.

    ``labels`` holds classes 1..K. ``probabilities`` is ``(..., K, Y, X)`` uint8 (p * 255) and
    ``uncertainty`` ``(..., Y, X)`` uint8 normalized entropy (0 certain, 255 uniform), or None.
    For file outputs they are lazily opened zarr arrays (TIFF: read back with tifffile).
    """

    labels: Any
    probabilities: Any = None
    uncertainty: Any = None
    path: Path | None = None
    metadata: dict[str, Any] | None = None


def output_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(ZARR_SUFFIXES):
        return "zarr"
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    raise SemSegError(f"output {path} must end in .zarr, .ome.zarr, .tif or .tiff")


def companion_paths(path: Path) -> dict[str, Path]:
    """For a TIFF output, the files holding probabilities and uncertainty."""
    stem = path.name[: -len(path.suffix)]
    return {"probabilities": path.with_name(f"{stem}_probabilities{path.suffix}"),
            "uncertainty": path.with_name(f"{stem}_uncertainty{path.suffix}")}


def partial_path(path: Path) -> Path:
    """Where an unfinished run writes (renamed to ``path`` when complete)."""
    path = Path(path)
    if output_kind(path) == "tiff":  # chunks go to a temporary zarr, streamed to TIFF at the end
        return path.with_name(path.name + ".zarr.partial")
    return path.with_name(path.name + ".partial")


def is_complete(path: Path) -> bool:
    """True when ``path`` is a finished output (it exists and no unfinished run is pending)."""
    path = Path(path)
    return path.exists() and not partial_path(path).exists()


def check_output(path: Path, overwrite: bool, resume: bool = False) -> None:
    """Refuse an existing output (unless overwrite) and an unwritable folder, before any work.

    With ``resume``, a complete output is accepted (there is nothing left to do) and so is an
    output name whose unfinished run (``<name>.partial``) is to be continued.
    """
    path = Path(path)
    output_kind(path)
    if path.exists() and not overwrite and not (resume and is_complete(path)):
        raise SemSegError(f"output {path} exists; pass --overwrite (overwrite=True) to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise SemSegError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise SemSegError(f"output folder {parent} is not writable")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


class MemorySink:
    """Collect results in numpy arrays (uint8/uint16; no float image is ever held)."""

    def __init__(self, layout: OutputLayout) -> None:
        self.layout = layout
        self.labels = np.zeros(layout.labels_shape, layout.label_dtype)
        self.probabilities = (np.zeros(layout.probabilities_shape, np.uint8)
                              if layout.probabilities else None)
        self.uncertainty = np.zeros(layout.labels_shape, np.uint8) if layout.uncertainty else None

    def done_chunks(self) -> set[tuple[int, int, int]]:
        return set()

    def write(self, chunk: ChunkResult) -> None:
        idx = self.layout.plane_index(chunk.plane)
        r, c = chunk.region
        self.labels[idx + (r, c)] = chunk.labels
        if self.probabilities is not None:
            self.probabilities[idx + (slice(None), r, c)] = chunk.probabilities
        if self.uncertainty is not None:
            self.uncertainty[idx + (r, c)] = chunk.uncertainty

    def finish(self) -> SegmentationResult:
        return SegmentationResult(self.labels, self.probabilities, self.uncertainty)

    def abort(self) -> None:
        pass


def _axes(n_plane: int, channel: bool = False) -> list[dict[str, str]]:
    names = ["t", "z"][-n_plane:] if n_plane else []
    axes = [{"name": n, "type": "time" if n == "t" else "space"} for n in names]
    if channel:
        axes.append({"name": "c", "type": "channel"})
    return axes + [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]


def _multiscales(name: str, n_levels: int, n_plane: int, channel: bool = False) -> list[dict]:
    nd = n_plane + (1 if channel else 0)
    datasets = [{"path": str(lv), "coordinateTransformations": [
        {"type": "scale", "scale": [1.0] * nd + [2.0**lv, 2.0**lv]}]} for lv in range(n_levels)]
    return [{"version": "0.4", "name": name, "axes": _axes(n_plane, channel), "datasets": datasets}]


def _hex_to_rgba(color: str) -> list[int]:
    c = color.lstrip("#")
    return [int(c[i:i + 2], 16) for i in (0, 2, 4)] + [255]


class ZarrSink:
    """Write chunks into an OME-Zarr (NGFF 0.4, zarr format 2) under ``<path>.partial``.

    Layout: the root group is the labels image (multiscale pyramid ``0``, ``1``, ... with
    ``image-label`` colours and class names); ``probabilities/0`` and ``uncertainty/0`` hold the
    optional maps. Finished chunks are recorded in ``semseg_done/`` until the run completes.
    """

    def __init__(self, path: Path, layout: OutputLayout, info: dict[str, Any], *,
                 overwrite: bool = False, resume: bool = False, pyramid: bool = True,
                 attach: bool = False) -> None:
        import zarr

        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.layout, self.info, self.overwrite, self.pyramid = layout, info, overwrite, pyramid
        fingerprint = json.dumps(info.get("fingerprint", {}), sort_keys=True)
        if attach:  # a cluster worker writing its chunks into the store the client created
            if not self.partial.exists():
                raise SemSegError(f"{self.partial} does not exist on this worker; the output must "
                                  "be on a filesystem shared by the client and all workers")
            self.root = zarr.open_group(str(self.partial), mode="r+", zarr_format=2)
            self._open_arrays()
            return
        if self.partial.exists():
            old = self._read_fingerprint()
            if resume and old == fingerprint:
                self.root = zarr.open_group(str(self.partial), mode="r+", zarr_format=2)
                self._open_arrays()
                return
            if resume and old is not None:
                raise SemSegError(f"cannot resume {self.path}: the unfinished run used other "
                                  "settings, model or input; run without --resume to start over")
            _remove(self.partial)
        self.root = zarr.open_group(str(self.partial), mode="w", zarr_format=2)
        self.root.attrs["napari_semseg"] = {**info, "complete": False, "fingerprint": fingerprint}
        lay = layout
        ones = (1,) * len(lay.plane_dims)
        self.root.create_array("0", shape=lay.labels_shape, dtype=lay.label_dtype,
                               chunks=ones + (lay.chunk, lay.chunk), fill_value=0)
        for lv in self._incremental_levels():
            f = 2 ** lv
            shape = lay.plane_dims + tuple(-(-s // f) for s in lay.plane_shape)
            self.root.create_array(str(lv), shape=shape, dtype=lay.label_dtype,
                                   chunks=ones + (lay.chunk // f, lay.chunk // f), fill_value=0)
        if lay.probabilities:
            g = self.root.create_group("probabilities")
            g.create_array("0", shape=lay.probabilities_shape, dtype=np.uint8,
                           chunks=ones + (lay.classes, lay.chunk, lay.chunk), fill_value=0)
            g.attrs["multiscales"] = _multiscales("probabilities", 1, len(lay.plane_dims), True)
        if lay.uncertainty:
            g = self.root.create_group("uncertainty")
            g.create_array("0", shape=lay.labels_shape, dtype=np.uint8,
                           chunks=ones + (lay.chunk, lay.chunk), fill_value=0)
            g.attrs["multiscales"] = _multiscales("uncertainty", 1, len(lay.plane_dims))
        (self.partial / DONE_DIR).mkdir(exist_ok=True)
        self._open_arrays()

    def _n_levels(self) -> int:
        """Pyramid levels of the labels: halve until the image fits in one chunk."""
        n, size = 1, max(self.layout.plane_shape)
        while self.pyramid and size > self.layout.chunk:
            size = (size + 1) // 2
            n += 1
        return n

    def _incremental_levels(self) -> list[int]:
        """Levels written chunk by chunk: each output chunk maps onto exactly one of their
        chunks (``chunk / 2**level`` pixels, at least :data:`MIN_INCREMENTAL_CHUNK`)."""
        out = []
        for lv in range(1, self._n_levels()):
            f = 2 ** lv
            if self.layout.chunk % f or self.layout.chunk // f < MIN_INCREMENTAL_CHUNK:
                break
            out.append(lv)
        return out

    def _read_fingerprint(self) -> str | None:
        try:
            attrs = json.loads((self.partial / ".zattrs").read_text())
            return attrs["napari_semseg"]["fingerprint"]
        except (OSError, KeyError, json.JSONDecodeError):
            return None

    def _open_arrays(self) -> None:
        self.labels = self.root["0"]
        with warnings.catch_warnings():  # the done-marker folder is not a zarr node
            warnings.simplefilter("ignore")
            names = set(self.root.array_keys())
        self.levels = {lv: self.root[str(lv)] for lv in self._incremental_levels()
                       if str(lv) in names}
        self.probabilities = self.root["probabilities/0"] if self.layout.probabilities else None
        self.uncertainty = self.root["uncertainty/0"] if self.layout.uncertainty else None

    def done_chunks(self) -> set[tuple[int, int, int]]:
        """``(plane, chunk_row, chunk_col)`` of every chunk already written by this run."""
        done = set()
        folder = self.partial / DONE_DIR
        if not folder.is_dir():
            return done
        for f in folder.iterdir():
            try:
                p, ci, cj = (int(v) for v in f.name.split("_"))
            except ValueError:
                continue  # a stray file
            done.add((p, ci, cj))
        return done

    def write(self, chunk: ChunkResult) -> None:
        idx = self.layout.plane_index(chunk.plane)
        r, c = chunk.region
        self.labels[idx + (r, c)] = chunk.labels
        if self.probabilities is not None:
            self.probabilities[idx + (slice(None), r, c)] = chunk.probabilities
        if self.uncertainty is not None:
            self.uncertainty[idx + (r, c)] = chunk.uncertainty
        for lv, arr in self.levels.items():  # nearest-neighbour pyramid, chunk by chunk
            f = 2 ** lv
            block = chunk.labels[::f, ::f]
            y, x = r.start // f, c.start // f
            arr[idx + (slice(y, y + block.shape[0]), slice(x, x + block.shape[1]))] = block
        ci, cj = r.start // self.layout.chunk, c.start // self.layout.chunk
        # the marker is written after the data: a chunk with a marker is complete on disk
        (self.partial / DONE_DIR / f"{chunk.plane}_{ci}_{cj}").touch()

    def _build_pyramid(self) -> int:
        """Downsample labels by 2 (nearest) level by level, chunk by chunk, from the last level
        written with the chunks; return the level count."""
        lay = self.layout
        level = max(self.levels, default=0)
        src = self.levels.get(level, self.labels)
        ones = (1,) * len(lay.plane_dims)
        while self.pyramid and max(src.shape[-2:]) > lay.chunk:
            shape = src.shape[:-2] + tuple((s + 1) // 2 for s in src.shape[-2:])
            dst = self.root.create_array(str(level + 1), shape=shape, dtype=src.dtype,
                                         chunks=ones + (lay.chunk, lay.chunk), fill_value=0,
                                         overwrite=True)
            step = lay.chunk * 2
            for p in range(int(np.prod(lay.plane_dims)) if lay.plane_dims else 1):
                idx = lay.plane_index(p)
                for y in range(0, src.shape[-2], step):
                    for x in range(0, src.shape[-1], step):
                        block = src[idx + (slice(y, y + step, 2), slice(x, x + step, 2))]
                        dst[idx + (slice(y // 2, y // 2 + block.shape[0]),
                                   slice(x // 2, x // 2 + block.shape[1]))] = block
            level, src = level + 1, dst
        return level + 1

    def finish(self) -> SegmentationResult:
        import zarr

        n_levels = self._build_pyramid()
        info = dict(self.root.attrs["napari_semseg"], complete=True)
        names = info.get("class_names", [])
        colors = info.get("class_colors", [])
        self.root.attrs.update({
            "multiscales": _multiscales("labels", n_levels, len(self.layout.plane_dims)),
            "image-label": {
                "version": "0.4",
                "colors": [{"label-value": k + 1, "rgba": _hex_to_rgba(c)} for k, c in enumerate(colors)],
                "properties": [{"label-value": k + 1, "name": n} for k, n in enumerate(names)],
            },
            "napari_semseg": info,
        })
        if self.path.exists():
            _remove(self.path)
        os.replace(self.partial, self.path)  # the output appears complete, in one step
        shutil.rmtree(self.path / DONE_DIR, ignore_errors=True)
        root = zarr.open_group(str(self.path), mode="r")
        return SegmentationResult(
            root["0"], root["probabilities/0"] if self.layout.probabilities else None,
            root["uncertainty/0"] if self.layout.uncertainty else None, self.path, info)

    def abort(self) -> None:
        """Leave the partial store (resumable); the final name never appears."""


def _lazy_tiff(path: Path) -> Any:
    """Open a TIFF as a lazy zarr array (nothing is read until sliced)."""
    import tifffile
    import zarr

    return zarr.open(tifffile.imread(path, aszarr=True), mode="r")


def _tiles_of(arr: Any, tile: int):
    """Yield full-size TIFF tiles of an array, page by page (all leading axes), row-major."""
    h, w = arr.shape[-2:]
    for idx in np.ndindex(*arr.shape[:-2]):
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                block = np.asarray(arr[idx + (slice(y, y + tile), slice(x, x + tile))])
                if block.shape != (tile, tile):
                    block = np.pad(block, ((0, tile - block.shape[0]), (0, tile - block.shape[1])))
                yield block


class TiffSink(ZarrSink):
    """Write chunks to a temporary zarr, then stream it into a tiled BigTIFF (GeoTIFF tags kept)."""

    TIFF_TILE = 256

    def __init__(self, path: Path, layout: OutputLayout, info: dict[str, Any], *,
                 geo_tags: list[tuple] | None = None, overwrite: bool = False,
                 resume: bool = False) -> None:
        self.tiff_path = Path(path)
        self.geo_tags = geo_tags or []
        super().__init__(self.tiff_path.with_name(self.tiff_path.name + ".zarr"), layout, info,
                         overwrite=overwrite, resume=resume, pyramid=False)

    def _write_tiff(self, arr: Any, target: Path, axes: str) -> None:
        import tifffile

        tmp = target.with_name(target.name + ".partial")
        tifffile.imwrite(tmp, _tiles_of(arr, self.TIFF_TILE), shape=arr.shape, dtype=arr.dtype,
                         tile=(self.TIFF_TILE, self.TIFF_TILE), bigtiff=True, compression="zlib",
                         extratags=self.geo_tags, photometric="minisblack",
                         metadata={"axes": axes})
        os.replace(tmp, target)

    def finish(self) -> SegmentationResult:
        planes = "".join(a["name"] for a in _axes(len(self.layout.plane_dims))).upper()[:-2]
        extra = companion_paths(self.tiff_path)
        # companions first, the labels file last: it appears only when everything is written
        if self.probabilities is not None:
            self._write_tiff(self.probabilities, extra["probabilities"], planes + "CYX")
        if self.uncertainty is not None:
            self._write_tiff(self.uncertainty, extra["uncertainty"], planes + "YX")
        self._write_tiff(self.labels, self.tiff_path, planes + "YX")
        shutil.rmtree(self.partial, ignore_errors=True)
        return SegmentationResult(
            _lazy_tiff(self.tiff_path),
            _lazy_tiff(extra["probabilities"]) if self.probabilities is not None else None,
            _lazy_tiff(extra["uncertainty"]) if self.uncertainty is not None else None,
            self.tiff_path, self.info)


def make_sink(output: Any, layout: OutputLayout, info: dict[str, Any], *,
              geo_tags: list[tuple] | None = None, overwrite: bool = False,
              resume: bool = False) -> MemorySink | ZarrSink | TiffSink:
    """Pick the sink for ``output``: None (memory), a ``.zarr`` path or a ``.tif`` path."""
    if output is None:
        return MemorySink(layout)
    path = Path(output)
    if output_kind(path) == "zarr":
        return ZarrSink(path, layout, info, overwrite=overwrite, resume=resume)
    return TiffSink(path, layout, info, geo_tags=geo_tags, overwrite=overwrite, resume=resume)
