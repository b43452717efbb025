"""Tiled, out-of-core prediction: the one generator behind the API, the CLI and the widgets.

Data flow per plane: plan a stride-aligned tile grid; read tile batches in a background thread
(only the window of each tile is read); normalize with the model's statistics and run the network
on the device (mixed precision and channels_last on GPU); cut each tile's blended probabilities
into the output chunks it covers; when a chunk has received all its tiles, finish it (argmax,
uint8 probabilities, entropy), hand it to the sink and forget it. No full-resolution float array
ever exists; memory is bounded by about one row of tiles.
"""

from __future__ import annotations

import hashlib
import math
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .device import autocast, free_memory, is_out_of_memory, resolve_device
from .errors import Cancelled, SemSegError
from .io import ImageSource, check_finite, open_image
from .models import SemSegModel, as_model
from .normalize import Normalization, estimate_normalization
from .progress import ChunkResult, PredictProgress, drive
from .settings import PredictSettings, merge
from .tiling import TileGrid, normalize_tile, round_up
from .writers import OutputLayout, SegmentationResult, check_output, make_sink

DEFAULT_TILE = 1088  # 1024-pixel chunks plus a 64-pixel blending overlap
DEFAULT_OVERLAP = 64
BYTES_PER_PIXEL_GPU = 1500  # rough activation memory per input pixel at inference (fp16/bf16)


class _TileTooLarge(Exception):
    """Out of memory with a batch of one tile: the caller halves the tile and replans."""


@dataclass
class TilePlan:
    """Resolved tiling for one run."""

    tile: int
    overlap: int
    chunk: int
    batch_size: int
    scale: float  # network pixels per input pixel (1.0: no rescaling)


def _torch_ready(block: np.ndarray) -> np.ndarray:
    """Cast dtypes torch cannot hold (uint16, uint32, bool, ...) without losing values."""
    if block.dtype in (np.uint8, np.int8, np.int16, np.int32, np.int64, np.float32, np.float64):
        return block
    if block.dtype == np.float16:
        return block.astype(np.float32)
    return block.astype(np.float32) if block.dtype.itemsize <= 2 else block.astype(np.float64)


def auto_batch_size(device: torch.device, tile: int, requested: int | None) -> int:
    """Batch size: as requested; 1 on CPU; on GPU as many tiles as half the free memory holds."""
    if requested is not None:
        return int(requested)
    if device.type != "cuda":
        return 1
    free, _total = torch.cuda.mem_get_info(device)
    return int(max(1, min(64, (free * 0.5) // (tile * tile * BYTES_PER_PIXEL_GPU))))


def plan_tiles(source: ImageSource, model: SemSegModel, settings: PredictSettings,
               device: torch.device) -> TilePlan:
    """Resolve tile, overlap, chunk, batch size and rescaling for a run (validates them)."""
    meta = model.metadata
    scale = 1.0
    if settings.pixel_size is not None and meta.pixel_size:
        scale = settings.pixel_size / meta.pixel_size
    default_tile = meta.tile or DEFAULT_TILE
    default_overlap = 2 * meta.halo if meta.halo else DEFAULT_OVERLAP
    if scale != 1.0:  # tiles are given in network pixels; the grid lives in input pixels
        default_tile = round_up(max(2 * meta.stride, int(default_tile / scale)), meta.stride)
        default_overlap = round_up(int(default_overlap / scale), meta.stride)
    tile, overlap = normalize_tile(settings.tile, settings.overlap, meta.stride, default_tile,
                                   default_overlap, source.plane_shape)
    chunk = settings.chunk or max(64, tile - overlap)
    batch = auto_batch_size(device, tile, settings.batch_size)
    return TilePlan(tile, overlap, chunk, batch, scale)


class TilePredictor:
    """Runs the network on batches of raw tiles and returns softmax probabilities.

    Normalization, rescaling, mixed precision and channels_last happen on the device. A CUDA
    out-of-memory error splits the batch in halves (and remembers the smaller batch); with a
    single tile it raises so the caller can halve the tile.
    """

    def __init__(self, model: SemSegModel, device: torch.device, normalization: Normalization,
                 *, amp: bool = True, scale: float = 1.0, compile: bool = False) -> None:
        self.device, self.norm, self.amp, self.scale = device, normalization, amp, scale
        self.stride = model.metadata.stride
        self.model = model.to(device).eval()
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if compile and device.type == "cuda" else self.model
        self.max_batch: int | None = None

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        with torch.inference_mode(), autocast(self.device, self.amp):
            x = self.norm.apply_torch(x)
            if self.scale != 1.0:
                size = (round_up(max(1, round(h * self.scale)), self.stride),
                        round_up(max(1, round(w * self.scale)), self.stride))
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            logits = self.forward(x).float()
            if self.scale != 1.0:
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.softmax(dim=1)
            if self.device.type != "cpu":
                probs = probs.half()
        return probs

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        """Probabilities ``(B, K, H, W)`` (float32 on CPU, float16 from a GPU) for a raw batch."""
        n = batch.shape[0]
        step = min(n, self.max_batch or n)
        outs = []
        i = 0
        while i < n:
            part = batch[i:i + step]
            try:
                outs.append(self._run(part.to(self.device, non_blocking=True)).cpu().numpy())
                i += step
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                free_memory(self.device)
                if step == 1:
                    raise _TileTooLarge() from exc
                step = max(1, step // 2)
                self.max_batch = step
        return outs[0] if len(outs) == 1 else np.concatenate(outs)


def _prefetch(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Produce ``items`` in a background thread, ``depth`` ahead; stops when the consumer stops."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    sentinel = object()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(sentinel)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=work, daemon=True, name="semseg-prefetch")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is sentinel:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


def _read_tile(source: ImageSource, plane: int, grid: TileGrid, i: int, j: int) -> np.ndarray:
    rows, cols = grid.tile_region(i, j)
    block = source.read(plane, rows, cols)
    th, tw = grid.tile_shape
    pad = ((0, 0), (0, th - block.shape[1]), (0, tw - block.shape[2]))
    if pad[1][1] or pad[2][1]:
        mode = "reflect" if min(block.shape[1:]) > 1 else "edge"
        block = np.pad(block, pad, mode=mode)
    return block


def _batches(source: ImageSource, plane: int, grid: TileGrid, tiles: list[tuple[int, int]],
             batch_size: int, pin: bool, check_nan: bool) -> Iterator[tuple[list, torch.Tensor]]:
    for b in range(0, len(tiles), batch_size):
        group = tiles[b:b + batch_size]
        arr = _torch_ready(np.stack([_read_tile(source, plane, grid, i, j) for i, j in group]))
        if check_nan and not np.isfinite(arr).all():
            raise SemSegError("the image contains NaN or infinite pixels; replace them (e.g. with "
                              "numpy.nan_to_num) before segmenting")
        x = torch.from_numpy(arr)
        yield group, (x.pin_memory() if pin else x)


def finish_chunk(acc: np.ndarray, plane: int, region: tuple[slice, slice], *,
                 probabilities: bool, uncertainty: bool, label_dtype: np.dtype) -> ChunkResult:
    """Turn accumulated probabilities ``(K, h, w)`` into labels 1..K and optional uint8 maps."""
    labels = (acc.argmax(axis=0) + 1).astype(label_dtype)
    probs = np.rint(np.clip(acc, 0, 1) * 255).astype(np.uint8) if probabilities else None
    unc = None
    if uncertainty:
        k = acc.shape[0]
        p = np.clip(acc, 1e-7, 1.0)
        ent = -(p * np.log(p)).sum(axis=0) / math.log(k)
        unc = np.rint(np.clip(ent, 0, 1) * 255).astype(np.uint8)
    return ChunkResult(plane, region, labels, probs, unc)


def iter_plane(source: ImageSource, plane: int, grid: TileGrid, predictor: TilePredictor,
               wanted: set[tuple[int, int]], batch_size: int, *, probabilities: bool = False,
               uncertainty: bool = False, label_dtype: np.dtype = np.dtype(np.uint8),
               ) -> Generator[tuple[int, list[ChunkResult]], None, None]:
    """Predict the chunks ``wanted`` of one plane; yield ``(tiles_done, finished_chunks)`` per batch.

    Only tiles that touch a wanted chunk are computed, each once. A chunk is finished as soon as
    all tiles covering it are in, and its buffers are freed.
    """
    incidence = grid.incidence()
    tiles = sorted({t for c in wanted for t in incidence[c]})
    remaining = {c: len(incidence[c]) for c in wanted}
    pending: dict[tuple[int, int], list[tuple[slice, slice, np.ndarray]]] = {c: [] for c in wanted}
    check_nan = np.issubdtype(source.dtype, np.floating)
    pin = predictor.device.type == "cuda"
    for group, batch in _prefetch(_batches(source, plane, grid, tiles, batch_size, pin, check_nan)):
        probs = predictor(batch)
        finished = []
        for (i, j), p in zip(group, probs):
            y0, x0 = grid.rows.origins[i], grid.cols.origins[j]
            wy, wx = grid.rows.weights(i), grid.cols.weights(j)
            for c in grid.chunks_of_tile(i, j):
                if c not in remaining:
                    continue
                rows, cols = grid.chunk_region(*c)
                ys = slice(max(rows.start, y0) - y0, min(rows.stop, y0 + grid.rows.size) - y0)
                xs = slice(max(cols.start, x0) - x0, min(cols.stop, x0 + grid.cols.size) - x0)
                piece = p[:, ys, xs].astype(np.float32) * wy[ys, None] * wx[None, xs]
                cy = slice(ys.start + y0 - rows.start, ys.stop + y0 - rows.start)
                cx = slice(xs.start + x0 - cols.start, xs.stop + x0 - cols.start)
                pending[c].append((cy, cx, piece))
                remaining[c] -= 1
                if remaining[c] == 0:
                    acc = np.zeros((p.shape[0], rows.stop - rows.start, cols.stop - cols.start),
                                   np.float32)
                    for cy_, cx_, pc in pending.pop(c):
                        acc[:, cy_, cx_] += pc
                    del remaining[c]
                    finished.append(finish_chunk(acc, plane, (rows, cols),
                                                 probabilities=probabilities,
                                                 uncertainty=uncertainty, label_dtype=label_dtype))
        yield len(group), finished


def model_digest(model: SemSegModel) -> str:
    """A hash of the weights and metadata (identifies a model for resume)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(model.metadata.to_json().encode())
    for k, v in sorted(model.net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def iter_segment(image: Any, model: SemSegModel | str, settings: PredictSettings | None = None, *,
                 output: Any = None, should_stop: Callable[[], bool] | None = None,
                 **options: Any) -> Generator[PredictProgress, None, SegmentationResult]:
    """Segment ``image``; yield :class:`PredictProgress` after every batch; return the result.

    Every check (file, model, channels, tile, output) runs before the first tile is read. A run
    that is cancelled (``should_stop`` returns True, or the generator is closed) or fails leaves
    at most a ``<output>.partial`` store, never a file under the output name.

    Parameters are those of :func:`segment`.
    """
    settings = merge(PredictSettings, settings, options).validated()
    model = as_model(model)
    meta = model.metadata
    source = open_image(image, settings.channel_axis, expected_channels=meta.in_channels)
    check_finite(source)
    device = resolve_device(settings.device)
    plan = plan_tiles(source, model, settings, device)
    if output is not None:
        from pathlib import Path

        output = Path(output)
        check_output(output, settings.overwrite, settings.resume)
        if settings.resume and output.exists() and not output.with_name(output.name + ".partial").exists():
            yield PredictProgress(0, 0, message=f"{output} is already complete")
            return SegmentationResult(None, path=output)
    norm = meta.normalization or estimate_normalization(source)
    layout = OutputLayout(source.plane_dims, source.plane_shape, plan.chunk, meta.classes,
                          settings.probabilities, settings.uncertainty)
    info = {
        "class_names": meta.class_names, "class_colors": meta.class_colors,
        "model": {"arch": meta.arch, "encoder": meta.encoder, "digest": model_digest(model)},
        "settings": {**asdict(settings), "tile": plan.tile, "overlap": plan.overlap,
                     "chunk": plan.chunk, "batch_size": plan.batch_size},
    }
    info["fingerprint"] = {
        "input": {"shape": source.shape, "dtype": str(source.dtype),
                  "path": str(source.path) if source.path else None},
        "model": info["model"]["digest"],
        "tiling": [plan.tile, plan.overlap, plan.chunk, plan.scale],
        "outputs": [settings.probabilities, settings.uncertainty],
    }
    sink = make_sink(output, layout, info, geo_tags=source.geo_tags,
                     overwrite=settings.overwrite, resume=settings.resume)
    predictor = TilePredictor(model, device, norm, amp=settings.amp, scale=plan.scale,
                              compile=settings.compile)
    done_before = sink.done_chunks()
    grids = {}
    wanted = {}
    for p in range(source.n_planes):
        grid = TileGrid.plan(source.plane_shape, plan.tile, plan.overlap, meta.stride, plan.chunk)
        grids[p] = grid
        wanted[p] = {c for c in grid.incidence() if (p,) + c not in done_before}
    total = sum(len({t for c in wanted[p] for t in grids[p].incidence()[c]}) for p in grids)
    done = 0
    started = time.perf_counter()
    completed = False
    try:
        yield PredictProgress(0, total, message=f"{total} tiles of {plan.tile} px on {device}")
        for p in range(source.n_planes):
            tile = plan.tile
            while wanted[p]:
                grid = grids[p]
                try:
                    for n, chunks in iter_plane(source, p, grid, predictor, set(wanted[p]),
                                                plan.batch_size, probabilities=settings.probabilities,
                                                uncertainty=settings.uncertainty,
                                                label_dtype=layout.label_dtype):
                        for ch in chunks:
                            sink.write(ch)
                            wanted[p].discard((ch.region[0].start // plan.chunk,
                                               ch.region[1].start // plan.chunk))
                        done += n
                        rate = done / max(time.perf_counter() - started, 1e-9)
                        yield PredictProgress(min(done, total), total, chunks,
                                              message=f"{rate:.2f} tiles/s")
                        if should_stop is not None and should_stop():
                            raise Cancelled("segmentation cancelled")
                except _TileTooLarge:
                    if tile // 2 < 2 * meta.stride:
                        raise SemSegError("out of GPU memory even with one small tile; use "
                                          "--device cpu or a smaller model") from None
                    tile = round_up(tile // 2, meta.stride)
                    overlap = min(plan.overlap, round_up(tile // 4, meta.stride))
                    grids[p] = TileGrid.plan(source.plane_shape, tile, overlap, meta.stride,
                                             plan.chunk)
                    yield PredictProgress(done, total, message=f"out of memory: tile now {tile}")
        result = sink.finish()
        completed = True
        return result
    finally:
        if not completed:
            sink.abort()
        free_memory(device)


def segment(image: Any, model: SemSegModel | str, *, tile: int | None = None,
            overlap: int | None = None, device: str = "auto", batch_size: int | None = None,
            output: Any = None, probabilities: bool = False, uncertainty: bool = False,
            callback: Callable[[PredictProgress], Any] | None = None,
            settings: PredictSettings | None = None, **options: Any) -> SegmentationResult:
    """Segment an image of any size with a model, tile by tile.

    Parameters
    ----------
    image
        numpy, dask or zarr array, or a path (TIFF/OME-TIFF/GeoTIFF read lazily, zarr/OME-Zarr,
        PNG/JPEG, .npy). 2D, multichannel (channel axis inferred or ``channel_axis=``) or a Z/T
        stack (segmented plane by plane).
    model
        A model from :func:`build_model`/:func:`train`/:func:`load_model`, or a model file path.
    tile, overlap
        Tile edge and blending overlap in pixels (multiples of the network stride; defaults from
        the model: 1088 and 64, i.e. 1024-pixel output chunks).
    device
        ``"auto"`` (CUDA, MPS, CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
    batch_size
        Tiles per forward pass (default: 1 on CPU, from free memory on GPU).
    output
        None (return numpy arrays), or a path ending in ``.zarr`` (OME-Zarr with a pyramid) or
        ``.tif`` (tiled BigTIFF; probabilities/uncertainty in ``<name>_probabilities.tif`` ...).
    probabilities, uncertainty
        Also compute class probabilities and normalized entropy (uint8).
    callback
        Called with each :class:`PredictProgress`; return ``False`` to cancel.
    settings
        A :class:`PredictSettings`; keyword options override its fields.
    **options
        Other :class:`PredictSettings` fields (``chunk``, ``channel_axis``, ``pixel_size``,
        ``overwrite``, ``resume``, ``amp``, ``compile``).

    Returns
    -------
    SegmentationResult
        ``labels`` (classes 1..K), optional ``probabilities`` and ``uncertainty``.
    """
    options.update(tile=tile, overlap=overlap, device=device, batch_size=batch_size,
                   probabilities=probabilities, uncertainty=uncertainty)
    if settings is not None:  # keep the settings' values for options left at their defaults
        defaults = PredictSettings()
        options = {k: v for k, v in options.items() if v != getattr(defaults, k)}
    return drive(iter_segment(image, model, settings, output=output, **options), callback)
