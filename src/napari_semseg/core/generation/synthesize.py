"""Tiled synthesis: label maps of any size in, images out, chunk by chunk.

The same plan as segmentation (:class:`~napari_semseg.core.tiling.TileGrid`: stride-aligned
tiles, overlap bands blended with complementary cos² weights that sum to one, a zero-weight
margin at each tile's edge): each tile of the label map is read (only that window), one-hot
encoded, given the noise of its absolute position (:mod:`.noise`, so tiles and a whole-map pass
see the same noise), run through the generator, mapped to image units and multiplied by its
blending weights; a chunk is finished (rounded to the output dtype) as soon as all tiles
covering it are in, handed to the sink and forgotten. No full-resolution float image exists.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..device import autocast, free_memory, resolve_device
from ..errors import Cancelled
from ..io import ImageSource
from ..progress import drive
from ..tiling import TileGrid, default_margin, normalize_tile, round_up
from ..writers import check_output
from .data import one_hot
from .labels import check_label_values, open_label_map, read_label_tile
from .model_file import GeneratorModel, as_generator
from .noise import noise_window
from .settings import SynthesizeSettings
from .sinks import ImageChunk, ImageLayout, StreamSink, SynthesisResult, make_image_sink

GPU_BATCH = 4


@dataclass
class SynthesisProgress:
    """Progress of a synthesis job: tiles done of total, and the chunks finished just now."""

    done: int
    total: int
    chunks: list[ImageChunk] = field(default_factory=list)
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass
class SynthesisJob:
    """Everything a run needs, resolved and checked before any tile is generated."""

    source: ImageSource
    generator: GeneratorModel
    settings: SynthesizeSettings
    device: torch.device
    grid: TileGrid
    batch_size: int
    layout: ImageLayout
    info: dict[str, Any]
    output: Path | None


def plan_grid(source: ImageSource, generator: GeneratorModel, settings: SynthesizeSettings
              ) -> TileGrid:
    """Tile grid of one plane: chunk = the generator's tile (512), overlap its overlap (128 by default)."""
    meta = generator.metadata
    overlap = meta.overlap if settings.overlap is None else settings.overlap
    chunk = settings.chunk or meta.tile
    default_tile = round_up(chunk, meta.stride) + round_up(overlap, meta.stride)
    tile, overlap = normalize_tile(settings.tile, overlap, meta.stride, default_tile,
                                   round_up(overlap, meta.stride), source.plane_shape)
    chunk = settings.chunk or max(64, tile - overlap)
    return TileGrid.plan(source.plane_shape, tile, overlap, meta.stride, chunk,
                         default_margin(overlap))


def plane_seed(seed: int, plane: int) -> int:
    """The noise seed of plane ``plane`` of a stack (plane 0 uses ``seed`` itself)."""
    return int(seed) + 1_000_003 * int(plane)


def prepare(label_map: Any, generator: GeneratorModel | str | os.PathLike,
            settings: SynthesizeSettings, output: Any = None) -> SynthesisJob:
    """Check every input and resolve the plan. Raises :class:`SemSegError` for anything a user
    can fix (file, generator kind, label values, tile, output), before any work."""
    if output is not None:
        output = Path(output)
        check_output(output, settings.overwrite)
    source = open_label_map(label_map)
    generator = as_generator(generator)
    meta = generator.metadata
    device = resolve_device(settings.device)
    grid = plan_grid(source, generator, settings)
    check_label_values(source, meta.classes, meta.class_names)  # reads the map: last
    batch = settings.batch_size or (GPU_BATCH if device.type == "cuda" else 1)
    layout = ImageLayout(source.plane_dims, source.plane_shape, meta.channels,
                         np.dtype(meta.dtype), grid.chunk)
    info = {"kind": "synthesized image", "seed": settings.seed,
            "class_names": meta.class_names, "channel_names": meta.channel_names,
            "generator": {"classes": meta.classes, "channels": meta.channels,
                          "training": meta.training},
            "settings": {**asdict(settings), "tile": grid.rows.size, "overlap": grid.rows.overlap,
                         "chunk": grid.chunk, "batch_size": batch}}
    return SynthesisJob(source, generator, settings, device, grid, batch, layout, info, output)


class TileRunner:
    """Runs the generator on batches of label tiles; returns weighted images in image units."""

    def __init__(self, generator: GeneratorModel, device: torch.device, amp: bool) -> None:
        # channels_last: faster convolutions on GPUs and with oneDNN on CPUs
        self.generator = generator.to(device).eval().to(memory_format=torch.channels_last)
        self.device, self.amp = device, amp
        self.classes = generator.metadata.classes

    @torch.inference_mode()
    def __call__(self, labels: np.ndarray, noise: np.ndarray, weights: np.ndarray
                 ) -> np.ndarray:
        """``labels (B, H, W)``, ``noise (B, N, H, W)``, ``weights (B, H, W)`` ->
        ``(B, C, H, W)`` float32 ``weight * image``."""
        onehot = one_hot(torch.from_numpy(labels).to(self.device), self.classes)
        onehot = onehot.contiguous(memory_format=torch.channels_last)
        z = torch.from_numpy(noise).to(self.device).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            out = self.generator(onehot, z)
        img = self.generator.to_image_units(out.float()).contiguous()
        img *= torch.from_numpy(weights).to(self.device).unsqueeze(1)
        return img.cpu().numpy()


def _tile_inputs(job: SynthesisJob, plane: int, group: list[tuple[int, int]]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    grid, meta = job.grid, job.generator.metadata
    th, tw = grid.tile_shape
    labels, noise, weights = [], [], []
    seed = plane_seed(job.settings.seed, plane)
    for i, j in group:
        rows, cols = grid.tile_region(i, j)
        labels.append(read_label_tile(job.source, plane, rows, cols, (th, tw), meta.classes))
        y, x = grid.rows.origins[i], grid.cols.origins[j]
        noise.append(noise_window(seed, slice(y, y + th), slice(x, x + tw), meta.noise_fine,
                                  meta.noise_smooth, meta.noise_cell))
        weights.append(grid.weight(i, j))
    return np.stack(labels), np.stack(noise), np.stack(weights)


def _to_dtype(acc: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``(C, h, w)`` float image -> ``(h, w)`` or ``(h, w, C)`` in ``dtype`` (rounded and
    clipped to its range for integer types)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        acc = np.clip(np.rint(acc), info.min, info.max)
    out = acc.astype(dtype)
    return out[0] if out.shape[0] == 1 else np.ascontiguousarray(out.transpose(1, 2, 0))


def iter_plane(job: SynthesisJob, plane: int, runner: TileRunner
               ) -> Generator[tuple[int, list[ImageChunk]], None, None]:
    """Synthesize one plane; yield ``(tiles_done, finished_chunks)`` per batch of tiles.

    Contributions to a chunk are summed in the grid's fixed processing order, so the result
    does not depend on the batch size.
    """
    grid = job.grid
    incidence = grid.incidence()
    remaining = {c: len(t) for c, t in incidence.items()}
    acc: dict[tuple[int, int], np.ndarray] = {}
    tiles = grid.order(grid.tiles())
    channels = job.layout.channels
    for b in range(0, len(tiles), job.batch_size):
        group = tiles[b:b + job.batch_size]
        images = runner(*_tile_inputs(job, plane, group))
        finished = []
        for (i, j), img in zip(group, images, strict=False):
            y0, x0 = grid.rows.origins[i], grid.cols.origins[j]
            for c in grid.chunks_of_tile(i, j):
                rows, cols = grid.chunk_region(*c)
                if c not in acc:
                    acc[c] = np.zeros((channels, rows.stop - rows.start,
                                       cols.stop - cols.start), np.float32)
                ry = slice(rows.start - y0, rows.stop - y0)
                rx = slice(cols.start - x0, cols.stop - x0)
                acc[c] += _window(img, ry, rx, acc[c].shape[1:])
                remaining[c] -= 1
                if remaining[c] == 0:
                    finished.append(ImageChunk(plane, (rows, cols),
                                               _to_dtype(acc.pop(c), job.layout.dtype)))
        yield len(group), finished


def _window(img: np.ndarray, rows: slice, cols: slice, shape: tuple[int, int]) -> np.ndarray:
    """The part of tile ``img (C, th, tw)`` at tile coordinates ``rows, cols`` (which may reach
    outside the tile: zero there, as its weight is), of ``shape``."""
    out = np.zeros((img.shape[0],) + tuple(shape), np.float32)
    th, tw = img.shape[1:]
    y0, y1 = max(rows.start, 0), min(rows.stop, th)
    x0, x1 = max(cols.start, 0), min(cols.stop, tw)
    if y1 > y0 and x1 > x0:
        out[:, y0 - rows.start:y1 - rows.start, x0 - cols.start:x1 - cols.start] = \
            img[:, y0:y1, x0:x1]
    return out


def run_job(job: SynthesisJob, *, should_stop: Callable[[], bool] | None = None,
            keep: bool = True) -> Generator[SynthesisProgress, None, SynthesisResult]:
    """Run a prepared job; the output appears under its name only when complete. With
    ``keep=False`` (and no output) the chunks are only handed out with the events."""
    sink = (make_image_sink(job.output, job.layout, job.info, geo_tags=job.source.geo_tags)
            if keep or job.output is not None else StreamSink())
    completed = False
    try:
        runner = TileRunner(job.generator, job.device, job.settings.amp)
        total = job.grid.n_tiles * job.source.n_planes
        done, started = 0, time.perf_counter()
        yield SynthesisProgress(0, total, message=f"{total} tiles of {job.grid.rows.size} px "
                                f"on {job.device}, seed {job.settings.seed}")
        for p in range(job.source.n_planes):
            for n, chunks in iter_plane(job, p, runner):
                for chunk in chunks:
                    sink.write(chunk)
                done += n
                rate = done / max(time.perf_counter() - started, 1e-9)
                yield SynthesisProgress(done, total, chunks, message=f"{rate:.2f} tiles/s")
                if should_stop is not None and should_stop():
                    raise Cancelled("synthesis cancelled")
        result = sink.finish()
        completed = True
        return result
    finally:
        if not completed:
            sink.abort()
        free_memory(job.device)


def _settings(settings: SynthesizeSettings | None, options: dict[str, Any]
              ) -> SynthesizeSettings:
    base = settings if settings is not None else SynthesizeSettings()
    names = {f.name for f in fields(SynthesizeSettings)}
    unknown = set(options) - names
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; valid: {sorted(names)}")
    return replace(base, **options).validated()


def iter_synthesize(label_map: Any, generator: GeneratorModel | str | os.PathLike,
                    settings: SynthesizeSettings | None = None, *, output: Any = None,
                    should_stop: Callable[[], bool] | None = None, keep: bool = True,
                    **options: Any) -> Generator[SynthesisProgress, None, SynthesisResult]:
    """Synthesize an image for ``label_map``; yield :class:`SynthesisProgress` after every
    batch of tiles (with the chunks finished by it); return a :class:`~.sinks.SynthesisResult`.

    Every check runs before the first tile. A cancelled (``should_stop`` returns True, or the
    generator is closed) or failed run leaves nothing under the output name. ``keep=False``
    without an output keeps no image: the chunks only travel with the events (for a viewer
    that paints them into its own layer). Other parameters are those of :func:`synthesize`.
    """
    job = prepare(label_map, generator, _settings(settings, options), output)
    return (yield from run_job(job, should_stop=should_stop, keep=keep))


def synthesize(label_map: Any, generator: GeneratorModel | str | os.PathLike, *, seed: int = 0,
               output: Any = None, callback: Callable[[SynthesisProgress], Any] | None = None,
               settings: SynthesizeSettings | None = None, **options: Any) -> SynthesisResult:
    """Generate an image for a label map of any size, tile by tile.

    Parameters
    ----------
    label_map
        Integer labels (0 = unconstrained, 1..K = the generator's classes): a numpy, dask or
        zarr array, or a path (TIFF read lazily, zarr, PNG, .npy); 2D or a stack of planes.
    generator
        A generator from :func:`train_generator` / :func:`load_generator`, or its file path.
    seed
        Noise seed: the same seed gives the same image; another seed another variant.
    output
        None (return a numpy array), or a path ending in ``.zarr`` or ``.tif`` (written chunk
        by chunk; the file appears when complete).
    callback
        Called with each :class:`SynthesisProgress`; return ``False`` to cancel.
    settings
        A :class:`SynthesizeSettings`; keyword options override its fields.
    **options
        Other :class:`SynthesizeSettings` fields (``tile``, ``overlap``, ``chunk``, ``device``,
        ``batch_size``, ``amp``, ``overwrite``).

    Returns
    -------
    SynthesisResult
        ``image``: ``(Y, X)`` or ``(Y, X, C)`` (stacks: leading plane axes) in the generator's
        dtype (that of its training images).
    """
    if settings is None or seed != 0:  # a default seed keeps the settings' own
        options["seed"] = seed
    return drive(iter_synthesize(label_map, generator, settings, output=output, **options),
                 callback)
