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
import socket
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .constants import METADATA_KEY, hex_to_rgb
from .errors import SemSegError
from .progress import ChunkResult

DONE_DIR = "semseg_done"
# Pyramid levels whose chunks (the output chunk halved per level) are at least this large are
# written with every finished chunk (by whichever process finished it); coarser levels are
# built from them when the run completes.
MIN_INCREMENTAL_CHUNK = 256
TIFF_TILE = 256  # edge of the tiles of the TIFF files written
ZARR_SUFFIXES = (".zarr", ".ome.zarr")
TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")


@dataclass
class OutputLayout:
    """Shapes and types of everything a segmentation run writes.

    ``labels_dtype`` overrides the labels' type (default: uint8 below 256 classes, else uint16).
    """

    plane_dims: tuple[int, ...]
    plane_shape: tuple[int, int]
    chunk: int
    classes: int
    probabilities: bool
    uncertainty: bool
    labels_dtype: Any = None

    @property
    def label_dtype(self) -> np.dtype:
        if self.labels_dtype is not None:
            return np.dtype(self.labels_dtype)
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


@runtime_checkable
class Sink(Protocol):
    """Where the finished chunks of a run go (memory, OME-Zarr, TIFF, napari layers, ...).

    The engine calls :meth:`done_chunks` once before computing (chunks it lists are skipped:
    resume), :meth:`write` for every finished chunk (from a background thread, one chunk at a
    time), then either :meth:`finish` (its value is the run's result) or, when the run is
    cancelled or fails, :meth:`abort` (after the chunks already computed were written).
    """

    def done_chunks(self) -> set[tuple[int, int, int]]:
        """``(plane, chunk_row, chunk_col)`` of the chunks already written (not recomputed)."""
        ...

    def write(self, chunk: ChunkResult) -> None:
        """Store one finished chunk."""
        ...

    def finish(self) -> Any:
        """Complete the output after the last chunk; return the run's result."""
        ...

    def abort(self) -> None:
        """The run stopped before its end: leave nothing that looks complete."""
        ...


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


class OutputLock:
    """``<output>.lock``: one run at a time writes an output.

    Created exclusively (``O_EXCL``) with the writer's process id and host; a second run on the
    same output is refused with one line while that process lives. A lock left by a process
    that died (``kill -9``) is taken over.
    """

    def __init__(self, target: Path) -> None:
        self.path = target.with_name(target.name + ".lock")
        self.held = False

    def acquire(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _process_alive(owner):
                    raise SemSegError(
                        f"{self.path.name[:-5]} is being written by another run (process "
                        f"{owner.get('pid')} on {owner.get('host')}); wait for it to end or "
                        f"choose another output (if no run is writing it, delete {self.path})"
                    ) from None
                self.path.unlink(missing_ok=True)  # left by a run that died
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({"pid": os.getpid(), "host": socket.gethostname()}, fh)
            self.held = True
            return
        raise SemSegError(f"cannot lock {self.path}: another run keeps taking it")

    def _owner(self) -> dict[str, Any] | None:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _process_alive(owner: dict[str, Any]) -> bool:
    """Whether the lock's owner still runs (a process on another host is assumed to)."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def fingerprint_text(info: dict[str, Any]) -> str:
    """The resume fingerprint of a run's ``info`` as outputs record it (canonical JSON)."""
    return json.dumps(info.get("fingerprint", {}), sort_keys=True)


def recorded_fingerprint(path: Path) -> str | None:
    """The fingerprint a finished output records (zarr attributes or the TIFF's description),
    or None when it records none."""
    path = Path(path)
    try:
        if output_kind(path) == "zarr":
            attrs = json.loads((path / ".zattrs").read_text())
        else:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                attrs = json.loads(getattr(tif.pages.first, "description", "") or "{}")
        value = attrs[METADATA_KEY]["fingerprint"]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return value if isinstance(value, str) else None


def is_complete(path: Path) -> bool:
    """True when ``path`` is a finished output (it exists and no unfinished run is pending)."""
    path = Path(path)
    return path.exists() and not partial_path(path).exists()


def check_output(path: Path, overwrite: bool, resume: bool = False, *,
                 inputs: Sequence[Path | None] = (), companions: Sequence[str] = ()) -> None:
    """Refuse an existing output (unless overwrite) and an unwritable folder, before any work.

    With ``resume``, a complete output is accepted (there is nothing left to do) and so is an
    output name whose unfinished run (``<name>.partial``) is to be continued. An output that is
    one of ``inputs`` (or inside one, or holding one), also through links, is always refused:
    ``--overwrite`` never destroys an input. ``companions`` names the extra files a TIFF output
    writes beside it (``"probabilities"``, ``"uncertainty"``); they obey the same rules.
    """
    path = Path(path)
    kind = output_kind(path)
    extra = [companion_paths(path)[c] for c in companions] if kind == "tiff" else []
    for target in (path, *extra):
        check_not_input(target, inputs)
        if target.exists() and not overwrite and not (resume and is_complete(path)):
            raise SemSegError(f"output {target} exists; pass --overwrite (overwrite=True) to "
                              "replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise SemSegError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise SemSegError(f"output folder {parent} is not writable")


def _overlaps(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` resolve to the same place or one holds the other."""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def check_not_input(output: Path, inputs: Sequence[Path | None]) -> None:
    """Refuse an output that would replace (or write into) one of the inputs."""
    for inp in inputs:
        if inp is not None and _overlaps(Path(output), Path(inp)):
            raise SemSegError(f"output {output} is the input {inp} (or holds or is inside it); "
                              "choose another output name, the input would be destroyed")


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
    """OME-Zarr axes: up to two leading axes are t, z (more are ``dim_0``...), then c, y, x."""
    if n_plane > 2:
        axes = [{"name": f"dim_{i}"} for i in range(n_plane)]
    else:
        names = ["t", "z"][-n_plane:] if n_plane else []
        axes = [{"name": n, "type": "time" if n == "t" else "space"} for n in names]
    if channel:
        axes.append({"name": "c", "type": "channel"})
    return axes + [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]


def tiff_axes(n_plane: int) -> str:
    """tifffile axes letters of the leading (Z/T) axes: "", "Z", "TZ", or "Q"s beyond two."""
    if n_plane > 2:
        return "Q" * n_plane
    return "TZ"[-n_plane:] if n_plane else ""


@dataclass(frozen=True)
class Placement:
    """Name, pixel size and position of a labels image (OME-Zarr ``multiscales``), per axis."""

    name: str = "labels"
    scale: tuple[float, ...] | None = None
    translate: tuple[float, ...] | None = None


def _multiscales(name: str, n_levels: int, n_plane: int, channel: bool = False,
                 placement: Placement | None = None) -> list[dict]:
    nd = n_plane + (1 if channel else 0) + 2
    base = [float(v) for v in placement.scale] if placement and placement.scale else [1.0] * nd
    datasets = []
    for lv in range(n_levels):
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": base[:-2] + [
            base[-2] * 2.0**lv, base[-1] * 2.0**lv]}]
        if placement and placement.translate:
            transforms.append({"type": "translation",
                               "translation": [float(v) for v in placement.translate]})
        datasets.append({"path": str(lv), "coordinateTransformations": transforms})
    return [{"version": "0.4", "name": name, "axes": _axes(n_plane, channel), "datasets": datasets}]


def _image_label(info: dict[str, Any]) -> dict[str, Any]:
    """OME-Zarr ``image-label`` metadata: class colours and names of labels 1..K."""
    colors = info.get("class_colors") or []
    names = info.get("class_names") or []
    return {"version": "0.4",
            "colors": [{"label-value": k + 1, "rgba": [*hex_to_rgb(c), 255]}
                       for k, c in enumerate(colors)],
            "properties": [{"label-value": k + 1, "name": n} for k, n in enumerate(names)]}


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, tuples and bytes turned into JSON types."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


class ZarrSink:
    """Write chunks into an OME-Zarr (NGFF 0.4, zarr format 2) under ``<path>.partial``.

    Layout: the root group is the labels image (multiscale pyramid ``0``, ``1``, ... with
    ``image-label`` colours and class names); ``probabilities/0`` and ``uncertainty/0`` hold the
    optional maps. Finished chunks are recorded in ``semseg_done/`` until the run completes.
    ``placement`` gives the labels' name, scale and translation (default: pixels at the origin).
    """

    def __init__(self, path: Path, layout: OutputLayout, info: dict[str, Any], *,
                 overwrite: bool = False, resume: bool = False, pyramid: bool = True,
                 attach: bool = False, placement: Placement | None = None) -> None:
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.layout, self.info, self.overwrite, self.pyramid = layout, info, overwrite, pyramid
        self.placement = placement or Placement()
        fingerprint = fingerprint_text(info)
        self.lock = OutputLock(self.path)
        if attach:  # a cluster worker writing its chunks into the store the client created
            self.root = self._attach()
        else:
            self.lock.acquire()
            try:
                root = self._reopen(resume, fingerprint)
                self.root = self._create(fingerprint) if root is None else root
            except BaseException:
                self.lock.release()
                raise
        self._open_arrays()

    def _attach(self) -> Any:
        import zarr

        if not self.partial.exists():
            raise SemSegError(f"{self.partial} does not exist on this worker; the output must "
                              "be on a filesystem shared by the client and all workers")
        return zarr.open_group(str(self.partial), mode="r+", zarr_format=2)

    def _reopen(self, resume: bool, fingerprint: str) -> Any:
        """The unfinished store of the same run when resuming; else remove a stale one."""
        import zarr

        if not self.partial.exists():
            return None
        old = self._read_fingerprint()
        if resume and old == fingerprint:
            return zarr.open_group(str(self.partial), mode="r+", zarr_format=2)
        if resume and old is not None:
            raise SemSegError(f"cannot resume {self.path}: the unfinished run used other "
                              "settings, model or input; run without --resume to start over")
        _remove(self.partial)
        return None

    def _create(self, fingerprint: str) -> Any:
        import zarr

        root = zarr.open_group(str(self.partial), mode="w", zarr_format=2)
        root.attrs[METADATA_KEY] = {**self.info, "complete": False, "fingerprint": fingerprint}
        lay = self.layout
        ones = (1,) * len(lay.plane_dims)
        root.create_array("0", shape=lay.labels_shape, dtype=lay.label_dtype,
                          chunks=ones + (lay.chunk, lay.chunk), fill_value=0)
        for lv in self._incremental_levels():
            f = 2 ** lv
            shape = lay.plane_dims + tuple(-(-s // f) for s in lay.plane_shape)
            root.create_array(str(lv), shape=shape, dtype=lay.label_dtype,
                              chunks=ones + (lay.chunk // f, lay.chunk // f), fill_value=0)
        if lay.probabilities:
            g = root.create_group("probabilities")
            g.create_array("0", shape=lay.probabilities_shape, dtype=np.uint8,
                           chunks=ones + (lay.classes, lay.chunk, lay.chunk), fill_value=0)
            g.attrs["multiscales"] = _multiscales("probabilities", 1, len(lay.plane_dims), True)
        if lay.uncertainty:
            g = root.create_group("uncertainty")
            g.create_array("0", shape=lay.labels_shape, dtype=np.uint8,
                           chunks=ones + (lay.chunk, lay.chunk), fill_value=0)
            g.attrs["multiscales"] = _multiscales("uncertainty", 1, len(lay.plane_dims))
        (self.partial / DONE_DIR).mkdir(exist_ok=True)
        return root

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
            return attrs[METADATA_KEY]["fingerprint"]
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
        done: set[tuple[int, int, int]] = set()
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
            _downsample_into(src, dst, lay, lay.chunk * 2)
            level, src = level + 1, dst
        return level + 1

    def finish(self) -> SegmentationResult:
        try:
            return self._finish()
        finally:
            self.lock.release()

    def _finish(self) -> SegmentationResult:
        import zarr

        n_levels = self._build_pyramid()
        info = dict(self.root.attrs[METADATA_KEY], complete=True)
        self.root.attrs.update({
            "multiscales": _multiscales(self.placement.name, n_levels,
                                        len(self.layout.plane_dims), placement=self.placement),
            "image-label": _image_label(info),
            METADATA_KEY: info,
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
        self.lock.release()

    def discard(self) -> None:
        """Remove everything this run wrote (after a full disk: nothing incomplete stays)."""
        _remove(self.partial)
        self.lock.release()


def _downsample_into(src: Any, dst: Any, lay: OutputLayout, step: int) -> None:
    """``dst = src[..., ::2, ::2]``, read ``step`` x ``step`` pixels of ``src`` at a time."""
    for p in range(int(np.prod(lay.plane_dims)) if lay.plane_dims else 1):
        idx = lay.plane_index(p)
        for y in range(0, src.shape[-2], step):
            for x in range(0, src.shape[-1], step):
                block = src[idx + (slice(y, y + step, 2), slice(x, x + step, 2))]
                dst[idx + (slice(y // 2, y // 2 + block.shape[0]),
                           slice(x // 2, x // 2 + block.shape[1]))] = block


def _lazy_tiff(path: Path) -> Any:
    """Open a TIFF as a lazy zarr array (nothing is read until sliced)."""
    import tifffile
    import zarr

    return zarr.open(tifffile.imread(path, aszarr=True), mode="r")


def _tiles_of(arr: Any, tile: int) -> Iterator[np.ndarray]:
    """Yield full-size TIFF tiles of an array, page by page (all leading axes), row-major."""
    h, w = arr.shape[-2:]
    for idx in np.ndindex(*arr.shape[:-2]):
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                block = np.asarray(arr[idx + (slice(y, y + tile), slice(x, x + tile))])
                if block.shape != (tile, tile):
                    block = np.pad(block, ((0, tile - block.shape[0]), (0, tile - block.shape[1])))
                yield block


def tiff_extratags(geo_tags: list | None) -> list[tuple]:
    """GeoTIFF tags as tifffile ``extratags`` (restores tuples after a JSON round trip)."""
    out = []
    for tag in geo_tags or []:
        code, dtype, count, value = tag[:4]
        if isinstance(value, list):
            value = tuple(value)
        out.append((int(code), int(dtype), int(count), value, True))
    return out


def write_tiled_tiff(target: Path, arr: Any, axes: str, *, geo_tags: list | None = None,
                     description: dict[str, Any] | None = None, tile: int = TIFF_TILE) -> Path:
    """Stream ``arr`` (any array; read one tile at a time) into a zlib-compressed, tiled BigTIFF.

    Written under ``<target>.partial`` and renamed when complete. ``geo_tags`` (GeoTIFF/GDAL
    tags) are copied; ``description`` is stored as JSON in the image description.
    """
    import tifffile

    target = Path(target)
    tmp = target.with_name(target.name + ".partial")
    try:
        tifffile.imwrite(tmp, _tiles_of(arr, tile), shape=tuple(arr.shape),
                         dtype=np.dtype(arr.dtype), tile=(tile, tile), bigtiff=True,
                         compression="zlib", extratags=tiff_extratags(geo_tags),
                         photometric="minisblack", metadata={"axes": axes, **(description or {})})
    except BaseException:  # a full disk, a cancel: no half-written file stays
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    return target


class TiffSink(ZarrSink):
    """Write chunks to a temporary zarr, then stream it into a tiled BigTIFF (GeoTIFF tags kept)."""

    TIFF_TILE = TIFF_TILE

    def __init__(self, path: Path, layout: OutputLayout, info: dict[str, Any], *,
                 geo_tags: list[tuple] | None = None, overwrite: bool = False,
                 resume: bool = False) -> None:
        self.tiff_path = Path(path)
        self.geo_tags = geo_tags or []
        super().__init__(self.tiff_path.with_name(self.tiff_path.name + ".zarr"), layout, info,
                         overwrite=overwrite, resume=resume, pyramid=False)

    def _write_tiff(self, arr: Any, target: Path, axes: str, describe: bool = False) -> None:
        """Write one TIFF; the labels file records classes and the run's fingerprint."""
        description = None
        if describe:
            description = {METADATA_KEY: {
                "kind": "labels", "class_names": list(self.info.get("class_names", [])),
                "class_colors": list(self.info.get("class_colors", [])),
                "model": self.info.get("model"), "fingerprint": fingerprint_text(self.info)}}
        write_tiled_tiff(target, arr, axes, geo_tags=self.geo_tags, tile=self.TIFF_TILE,
                         description=description)

    def _finish(self) -> SegmentationResult:
        planes = tiff_axes(len(self.layout.plane_dims))
        extra = companion_paths(self.tiff_path)
        # companions first, the labels file last: it appears only when everything is written;
        # a failure (a full disk) removes the companions already written
        written: list[Path] = []
        try:
            for kind, arr, axes in (("probabilities", self.probabilities, planes + "CYX"),
                                    ("uncertainty", self.uncertainty, planes + "YX")):
                if arr is not None:
                    self._write_tiff(arr, extra[kind], axes)
                    written.append(extra[kind])
            self._write_tiff(self.labels, self.tiff_path, planes + "YX", describe=True)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
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
