"""Tiled, out-of-core prediction: the one generator behind the API, the CLI and the widgets.

Data flow per plane: plan a stride-aligned tile grid; read tile batches in a background thread
(only the window of each tile is read); normalize with the model's statistics and run the network
on the device (mixed precision and channels_last on GPU), multiply the softmax by the tile's
blending weights there; cut each tile into the output chunks it covers; when a chunk has received
all its tiles, finish it (argmax, uint8 probabilities, entropy), hand it to the sink and forget it.
No full-resolution float array ever exists: between chunks only the blending bands (``overlap``
pixels wide) of the tiles already computed are kept, about one band per row of tiles.

On a GPU the next batch is launched before the previous one is post-processed (the device never
waits for the CPU), host buffers are pinned and copies non-blocking; a CUDA out-of-memory error
halves the batch, then the tile, and the run continues.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .device import autocast, free_memory, is_out_of_memory, resolve_device
from .errors import Cancelled, SemSegError
from .io import ImageSource, check_finite, open_image
from .memory import reuse_freed_memory
from .models import SemSegModel, as_model
from .normalize import Normalization, estimate_normalization
from .progress import ChunkResult, PredictProgress, drive
from .settings import PredictSettings, merge
from .tiling import TileGrid, default_margin, normalize_tile, round_up
from .tta import averaged_probabilities
from .writers import (OutputLayout, SegmentationResult, check_output, is_complete, make_sink)

DEFAULT_CHUNK = 1024  # output chunk edge; a tile is a chunk plus the overlap
# Overlap in units of the network stride. Predictions within about three deepest-level cells
# (3 x 32 pixels for a depth-5 encoder) of a tile edge differ from a whole-image pass (zero
# padding instead of context). With 6 strides of overlap the outer quarter of each tile's band
# gets weight zero and the rest is blended: tiled labels then agree with a whole-image pass on
# >= 99.98 % of pixels (4 strides: 99.93 %, 2 strides: 99.6 %; measured, see
# docs/sections/performance.md).
OVERLAP_STRIDES = 6
# Peak activation memory per input pixel of one tile at inference: 550 B measured for
# Unet-resnet18 in float32 on the CPU, about half with mixed precision; 600 leaves room for
# larger encoders (the OOM back-off corrects a wrong guess).
BYTES_PER_PIXEL_GPU = 600
GPU_TILES = (2048, 1024, 512)  # output chunk edges tried on a GPU, largest first
MAX_GPU_BATCH = 32


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
    margin: int = 0


def _torch_ready(block: np.ndarray) -> np.ndarray:
    """Cast dtypes torch cannot hold (uint16, uint32, bool, ...) without losing values."""
    if block.dtype in (np.uint8, np.int8, np.int16, np.int32, np.int64, np.float32, np.float64):
        return block
    if block.dtype == np.float16:
        return block.astype(np.float32)
    return block.astype(np.float32) if block.dtype.itemsize <= 2 else block.astype(np.float64)


def _free_gpu_bytes(device: torch.device) -> int:
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def auto_batch_size(device: torch.device, tile: int, requested: int | None,
                    free_bytes: int | None = None) -> int:
    """Batch size: as requested; 1 on CPU; on GPU as many tiles as half the free memory holds."""
    if requested is not None:
        return int(requested)
    if device.type != "cuda":
        return 1
    free = _free_gpu_bytes(device) if free_bytes is None else free_bytes
    return int(max(1, min(MAX_GPU_BATCH, (free * 0.5) // (tile * tile * BYTES_PER_PIXEL_GPU))))


def auto_gpu_tile(free_bytes: int, overlap: int, stride: int) -> int:
    """Largest tile (``chunk + overlap`` for a chunk in :data:`GPU_TILES`) that fits 4 times in
    half the free GPU memory, so that batches of several tiles still fit."""
    for chunk in GPU_TILES:
        tile = round_up(chunk + overlap, stride)
        if 4 * tile * tile * BYTES_PER_PIXEL_GPU <= 0.5 * free_bytes:
            return tile
    return round_up(GPU_TILES[-1] + overlap, stride)


def default_overlap_for(stride: int, halo: int | None = None) -> int:
    """Default blending overlap: 6 network strides, or twice the model's halo if larger."""
    return max(OVERLAP_STRIDES * stride, round_up(2 * (halo or 0), stride))


def plan_tiles(source: ImageSource, model: SemSegModel, settings: PredictSettings,
               device: torch.device) -> TilePlan:
    """Resolve tile, overlap, chunk, batch size and rescaling for a run (validates them).

    Defaults: overlap ``max(6 x stride, 2 x halo)`` (192 pixels for smp's usual stride of 32),
    tile = output chunk (the model's ``tile``, else 1024) + overlap. On a CUDA device
    without an explicit tile, the tile is chosen from the free GPU memory (2048-pixel chunks on
    a large GPU) and the batch fills half of what is left.
    """
    meta = model.metadata
    scale = 1.0
    if settings.pixel_size is not None and meta.pixel_size:
        scale = settings.pixel_size / meta.pixel_size
    default_overlap = default_overlap_for(meta.stride, meta.halo)
    default_tile = round_up(meta.tile or DEFAULT_CHUNK, meta.stride) + default_overlap
    free = None
    if device.type == "cuda":
        free = _free_gpu_bytes(device)
        if settings.tile is None:
            default_tile = auto_gpu_tile(free, default_overlap, meta.stride)
    if scale != 1.0:  # tiles are given in network pixels; the grid lives in input pixels
        default_tile = round_up(max(2 * meta.stride, int(default_tile / scale)), meta.stride)
        default_overlap = round_up(int(default_overlap / scale), meta.stride)
    tile, overlap = normalize_tile(settings.tile, settings.overlap, meta.stride, default_tile,
                                   default_overlap, source.plane_shape)
    chunk = settings.chunk or max(64, tile - overlap)
    batch = auto_batch_size(device, tile, settings.batch_size, free)
    return TilePlan(tile, overlap, chunk, batch, scale, default_margin(overlap))


class TilePredictor:
    """Runs the network on batches of raw tiles and returns blended softmax probabilities.

    Normalization, rescaling, mixed precision, channels_last and the multiplication by the
    tiles' blending weights happen on the device. A CUDA out-of-memory error splits the batch in
    halves (and remembers the smaller batch); with a single tile it raises so the caller can
    halve the tile.
    """

    def __init__(self, model: SemSegModel, device: torch.device, normalization: Normalization,
                 *, amp: bool = True, scale: float = 1.0, compile: bool = False,
                 tta: int = 1) -> None:
        self.device, self.norm, self.amp, self.scale = device, normalization, amp, scale
        self.tta = tta
        self.stride = model.metadata.stride
        self.classes = model.metadata.classes
        self.model = model.to(device).eval()
        # channels_last: faster convolutions on GPUs and with oneDNN on CPUs (+20 % measured)
        self.channels_last = device.type in ("cuda", "cpu")
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = self.model
        if compile and device.type == "cuda":
            self.forward = torch.compile(self.model)
        self.max_batch: int | None = None
        # launch the next batch before post-processing the previous one (GPU work is queued)
        self.asynchronous = device.type == "cuda"
        self._weights: dict[Any, torch.Tensor] = {}

    def weight(self, key: Any, make: Callable[[], np.ndarray]) -> torch.Tensor:
        """A device copy of a 2D blending weight, cached under ``key``."""
        w = self._weights.get(key)
        if w is None:
            if len(self._weights) > 64:
                self._weights.clear()
            w = self._weights[key] = torch.from_numpy(np.ascontiguousarray(make())).to(self.device)
        return w

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.forward(x)

    def _run(self, x: torch.Tensor, weights: list[torch.Tensor] | None) -> torch.Tensor:
        h, w = x.shape[-2:]
        with torch.inference_mode(), autocast(self.device, self.amp):
            x = self.norm.apply_torch(x)
            if self.scale != 1.0:
                size = (round_up(max(1, round(h * self.scale)), self.stride),
                        round_up(max(1, round(w * self.scale)), self.stride))
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            probs = averaged_probabilities(self._forward, x, self.tta)
            if self.scale != 1.0:
                # resampled probabilities still sum to 1 (bilinear weights are convex)
                probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
            probs = probs.contiguous()
            if weights is not None:
                for b, wt in enumerate(weights):
                    probs[b].mul_(wt)
        return probs

    def predict(self, batch: torch.Tensor,
                weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Blended probabilities ``(B, K, H, W)`` (float32) of a raw batch, on the device.

        On a GPU the work is only queued (nothing waits for it here), so the caller can go on
        with the previous batch's results meanwhile.
        """
        n = batch.shape[0]
        step = min(n, self.max_batch or n)
        parts: list[torch.Tensor] = []
        i = 0
        while i < n:
            part = batch[i:i + step]
            try:
                parts.append(self._run(part.to(self.device, non_blocking=True),
                                       None if weights is None else weights[i:i + step]))
                i += step
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                free_memory(self.device)
                if step == 1:
                    raise _TileTooLarge() from exc
                step = max(1, step // 2)
                self.max_batch = step
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def __call__(self, batch: torch.Tensor,
                 weights: list[torch.Tensor] | None = None) -> np.ndarray:
        """Probabilities ``(B, K, H, W)`` as a float32 numpy array (waits for the device)."""
        return self.predict(batch, weights).float().cpu().numpy()


def _prefetch(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Produce ``items`` in a background thread, ``depth`` ahead; stops when the consumer stops."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    sentinel = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(sentinel)
        except BaseException as exc:  # handed to the consumer
            put(exc)

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


class BackgroundWriter:
    """Hand finished chunks to ``write`` in a background thread (compression and disk writes
    overlap with the next forward passes). At most ``depth`` chunks wait; the first error of
    the thread is raised by the next :meth:`put` or by :meth:`flush`."""

    def __init__(self, write: Callable[[ChunkResult], Any], depth: int = 8) -> None:
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, daemon=True, name="semseg-writer")
        self._thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._write(item)
            except BaseException as exc:  # handed to the producer
                self._error = exc
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, chunk: ChunkResult) -> None:
        self._raise()
        self._queue.put(chunk)

    def flush(self) -> None:
        """Wait until every chunk handed over is written."""
        self._queue.join()
        self._raise()

    def close(self) -> None:
        """Write what is queued, then stop the thread (errors are not raised here)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def read_tile(source: ImageSource, plane: int, grid: TileGrid, i: int, j: int) -> np.ndarray:
    """Read tile ``(i, j)``; the part beyond the image (less than one stride) is reflected."""
    rows, cols = grid.tile_region(i, j)
    try:
        block = source.read(plane, rows, cols)
    except SemSegError:
        raise
    except Exception as exc:  # a damaged chunk of a file, a network filesystem error...
        where = f" of {source.path}" if source.path else ""
        raise SemSegError(f"cannot read rows {rows.start}-{rows.stop}, columns {cols.start}-"
                          f"{cols.stop} of plane {plane}{where}: {type(exc).__name__}: {exc}"
                          ) from exc
    th, tw = grid.tile_shape
    pad = ((0, 0), (0, th - block.shape[1]), (0, tw - block.shape[2]))
    if pad[1][1] or pad[2][1]:
        mode = "reflect" if min(block.shape[1:]) > 1 else "edge"
        if mode == "reflect" and (pad[1][1] >= block.shape[1] or pad[2][1] >= block.shape[2]):
            mode = "symmetric"
        block = np.pad(block, pad, mode=mode)
    return block


def _batches(source: ImageSource, plane: int, grid: TileGrid, tiles: list[tuple[int, int]],
             batch_size: int, pin: bool, check_nan: bool) -> Iterator[tuple[list, torch.Tensor]]:
    th, tw = grid.tile_shape
    for b in range(0, len(tiles), batch_size):
        group = tiles[b:b + batch_size]
        first = read_tile(source, plane, grid, *group[0])
        arr = np.empty((len(group),) + first.shape, first.dtype)
        arr[0] = first
        for k, (i, j) in enumerate(group[1:], 1):
            arr[k] = read_tile(source, plane, grid, i, j)
        arr = _torch_ready(arr)
        if check_nan and not np.isfinite(arr).all():
            raise SemSegError("the image contains NaN or infinite pixels; replace them (e.g. with "
                              "numpy.nan_to_num) before segmenting")
        x = torch.from_numpy(arr)
        yield group, (x.pin_memory() if pin else x)


def argmax_classes(acc: torch.Tensor) -> torch.Tensor:
    """``argmax(acc, dim=0) + 1`` as uint8 (int32 for 256+ classes); ties to the lower class.

    ``torch.max(dim=0)`` is 4-9x faster than ``torch.argmax`` over the leading dimension on
    the CPU (0.2 s for a 2 x 1024² chunk there)."""
    dtype = torch.uint8 if acc.shape[0] < 256 else torch.int32
    return torch.max(acc, 0).indices.to(dtype).add_(1)


def _finish_tensors(acc: torch.Tensor, *, probabilities: bool, uncertainty: bool,
                    label_dtype: np.dtype) -> list[torch.Tensor | None]:
    """Labels 1..K and optional uint8 probabilities / normalized entropy, on acc's device."""
    labels = argmax_classes(acc)
    probs = unc = None
    if probabilities:
        probs = (acc * 255).round_().clamp_(0, 255).to(torch.uint8)
    if uncertainty:
        k = acc.shape[0]
        p = acc.clamp(1e-7, 1.0)
        ent = (p * p.log()).sum(dim=0).mul_(-1.0 / math.log(k))
        unc = ent.mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return [labels, probs, unc]


def finish_chunk(acc: np.ndarray | torch.Tensor, plane: int, region: tuple[slice, slice], *,
                 probabilities: bool, uncertainty: bool, label_dtype: np.dtype) -> ChunkResult:
    """Turn accumulated probabilities ``(K, h, w)`` into labels 1..K and optional uint8 maps."""
    t = torch.from_numpy(acc) if isinstance(acc, np.ndarray) else acc
    parts = _finish_tensors(t, probabilities=probabilities, uncertainty=uncertainty,
                            label_dtype=label_dtype)
    labels, probs, unc = (None if x is None else x.cpu().numpy() for x in parts)
    return ChunkResult(plane, region, labels.astype(label_dtype, copy=False), probs, unc)


class _Finished:
    """Chunk results still on the device; copied to pinned host memory without blocking."""

    def __init__(self, plane: int, region: tuple[slice, slice], parts: list, label_dtype: Any,
                 device: torch.device) -> None:
        self.plane, self.region, self.label_dtype = plane, region, label_dtype
        if device.type == "cuda":
            host = []
            for x in parts:
                if x is None:
                    host.append(None)
                    continue
                h = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
                host.append(h.copy_(x, non_blocking=True))
            self.parts = host
        else:
            self.parts = [None if x is None else x.cpu() for x in parts]

    def result(self) -> ChunkResult:
        labels, probs, unc = (None if x is None else x.numpy() for x in self.parts)
        return ChunkResult(self.plane, self.region,
                           labels.astype(self.label_dtype, copy=False), probs, unc)


def _weight_key(grid: TileGrid, i: int, j: int) -> tuple[int, int]:
    """Tiles with equal keys have equal 2D weights: first, interior and last along each axis."""
    def kind(axis: Any, k: int) -> int:
        n = len(axis.origins)
        return k if k in (0, n - 1) or n <= 2 else 1

    return kind(grid.rows, i), kind(grid.cols, j)


def iter_plane(source: ImageSource, plane: int, grid: TileGrid, predictor: TilePredictor,
               wanted: set[tuple[int, int]], batch_size: int, *, probabilities: bool = False,
               uncertainty: bool = False, label_dtype: np.dtype = np.dtype(np.uint8),
               prefetch: int = 2) -> Generator[tuple[int, list[ChunkResult]], None, None]:
    """Predict the chunks ``wanted`` of one plane; yield ``(tiles_done, finished_chunks)`` per batch.

    Only tiles that touch a wanted chunk are computed, each once, in the grid's processing
    order (:meth:`TileGrid.order`: along the shorter side). A chunk is finished as soon as all
    tiles covering it are in, and its buffers are freed. Accumulation and finishing (argmax,
    quantization, entropy) run on the model's device; only the uint8 results come back.
    Contributions to a chunk are summed in that fixed order, so any set of wanted chunks (a
    block on a cluster worker, the chunks left by an interrupted run) gives bit-identical
    chunks.
    """
    incidence = grid.incidence()
    tiles = grid.order({t for c in wanted for t in incidence[c]})
    remaining = {c: len(incidence[c]) for c in wanted}
    pending: dict[tuple[int, int], list[tuple[slice, slice, torch.Tensor]]] = {}
    check_nan = np.issubdtype(source.dtype, np.floating)
    device = predictor.device
    pin = device.type == "cuda"
    k = predictor.classes
    acc_buf = torch.empty((k, grid.chunk, grid.chunk), dtype=torch.float32, device=device)
    supports = ({i: grid.rows.support(i) for i in range(len(grid.rows))},
                {j: grid.cols.support(j) for j in range(len(grid.cols))})
    wkey = (grid.tile_shape, grid.rows.overlap, grid.rows.margin, grid.shape)

    def weights_of(group: list[tuple[int, int]]) -> list[torch.Tensor]:
        return [predictor.weight(wkey + _weight_key(grid, i, j),
                                 lambda i=i, j=j: grid.weight(i, j)) for i, j in group]

    def consume(group: list[tuple[int, int]], probs: torch.Tensor) -> list[_Finished]:
        finished = []
        for (i, j), p in zip(group, probs):
            y0, x0 = grid.rows.origins[i], grid.cols.origins[j]
            (sy0, sy1), (sx0, sx1) = supports[0][i], supports[1][j]
            for c in grid.chunks_of_tile(i, j):
                if c not in remaining:
                    continue
                rows, cols = grid.chunk_region(*c)
                ry0, ry1 = max(rows.start, sy0), min(rows.stop, sy1)
                rx0, rx1 = max(cols.start, sx0), min(cols.stop, sx1)
                piece = p[:, ry0 - y0:ry1 - y0, rx0 - x0:rx1 - x0]
                cy = slice(ry0 - rows.start, ry1 - rows.start)
                cx = slice(rx0 - cols.start, rx1 - cols.start)
                remaining[c] -= 1
                if remaining[c]:
                    pending.setdefault(c, []).append((cy, cx, piece.clone()))
                    continue
                del remaining[c]
                h, w = rows.stop - rows.start, cols.stop - cols.start
                acc = acc_buf[:, :h, :w]
                acc.zero_()
                for cy_, cx_, pc in pending.pop(c, ()):
                    acc[:, cy_, cx_] += pc
                acc[:, cy, cx] += piece
                parts = _finish_tensors(acc, probabilities=probabilities,
                                        uncertainty=uncertainty, label_dtype=label_dtype)
                finished.append(_Finished(plane, (rows, cols), parts, label_dtype, device))
        return finished

    batches = _batches(source, plane, grid, tiles, batch_size, pin, check_nan)
    waiting: tuple[int, list[_Finished], Any] | None = None
    with torch.inference_mode():
        for group, batch in (_prefetch(batches, prefetch) if prefetch else batches):
            done = consume(group, predictor.predict(batch, weights_of(group)))
            if not predictor.asynchronous:
                yield len(group), [f.result() for f in done]
                continue
            event = None
            if device.type == "cuda":
                event = torch.cuda.Event()
                event.record()
            if waiting is not None:  # the device works on this batch while we hand over the last
                n, prev, prev_event = waiting
                if prev_event is not None:
                    prev_event.synchronize()
                yield n, [f.result() for f in prev]
            waiting = (len(group), done, event)
        if waiting is not None:
            n, prev, prev_event = waiting
            if prev_event is not None:
                prev_event.synchronize()
            yield n, [f.result() for f in prev]


def model_digest(model: SemSegModel) -> str:
    """A hash of the weights and metadata (identifies a model for resume); cached on the model
    until a parameter or buffer changes (in place or replaced)."""
    state = model.net.state_dict()
    meta = {k: v for k, v in asdict(model.metadata).items() if k != "versions"}
    key = (repr(sorted(meta.items())),
           tuple((k, v.data_ptr(), v._version) for k, v in state.items()))
    cached = getattr(model, "_semseg_digest", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    digest = _digest(model)
    model._semseg_digest = (key, digest)
    return digest


def _digest(model: SemSegModel) -> str:
    h = hashlib.blake2b(digest_size=16)
    meta = {k: v for k, v in asdict(model.metadata).items() if k != "versions"}
    h.update(repr(sorted(meta.items())).encode())
    for k, v in sorted(model.net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class SegmentJob:
    """Everything a run needs, resolved and validated before any tile is read."""

    source: ImageSource
    model: SemSegModel
    settings: PredictSettings
    device: torch.device
    plan: TilePlan
    layout: OutputLayout
    normalization: Normalization
    info: dict[str, Any]
    output: Path | None

    def grid(self, tile: int | None = None, overlap: int | None = None) -> TileGrid:
        tile = self.plan.tile if tile is None else tile
        overlap = self.plan.overlap if overlap is None else overlap
        margin = self.plan.margin if overlap == self.plan.overlap else default_margin(overlap)
        return TileGrid.plan(self.source.plane_shape, tile, overlap, self.model.metadata.stride,
                             self.plan.chunk, margin)

    def make_sink(self) -> Any:
        return make_sink(self.output, self.layout, self.info, geo_tags=self.source.geo_tags,
                         overwrite=self.settings.overwrite, resume=self.settings.resume)


@contextlib.contextmanager
def _reading(source: ImageSource) -> Iterator[None]:
    """Turn a failure to read the image (a damaged chunk...) into one clear line."""
    try:
        yield
    except SemSegError:
        raise
    except Exception as exc:
        what = source.path or "the image"
        raise SemSegError(f"cannot read {what}: {type(exc).__name__}: {exc}") from exc


def prepare(image: Any, model: SemSegModel | str | os.PathLike,
            settings: PredictSettings, output: Any = None, *,
            device: torch.device | None = None) -> SegmentJob | SegmentationResult:
    """Check every input and resolve the plan; return a :class:`SegmentJob`.

    Returns a :class:`SegmentationResult` without ``labels`` when ``settings.resume`` is set
    and ``output`` is already complete. Raises :class:`SemSegError` for anything a user can fix.
    """
    model = as_model(model)
    meta = model.metadata
    source = open_image(image, settings.channel_axis, expected_channels=meta.in_channels)
    with _reading(source):
        check_finite(source)
    device = resolve_device(settings.device) if device is None else device
    plan = plan_tiles(source, model, settings, device)
    if output is not None:
        output = Path(output)
        check_output(output, settings.overwrite, settings.resume)
        if settings.resume and is_complete(output):
            return SegmentationResult(None, path=output)
    if meta.normalization is None:
        with _reading(source):
            norm = estimate_normalization(source)
    else:
        norm = meta.normalization
    layout = OutputLayout(source.plane_dims, source.plane_shape, plan.chunk, meta.classes,
                          settings.probabilities, settings.uncertainty)
    digest = model_digest(model)
    info: dict[str, Any] = {
        "class_names": meta.class_names, "class_colors": meta.class_colors,
        "model": {"arch": meta.arch, "encoder": meta.encoder, "digest": digest},
        "settings": {**asdict(settings), "tile": plan.tile, "overlap": plan.overlap,
                     "chunk": plan.chunk, "batch_size": plan.batch_size},
    }
    info["fingerprint"] = {
        "input": {"shape": source.shape, "dtype": str(source.dtype),
                  "path": str(source.path.resolve()) if source.path else None},
        "model": digest,
        "tiling": [plan.tile, plan.overlap, plan.margin, plan.chunk, plan.scale],
        "outputs": [settings.probabilities, settings.uncertainty],
    }
    return SegmentJob(source, model, settings, device, plan, layout, norm, info, output)


def _halve_tile_size(tile: int, overlap: int, stride: int) -> tuple[int, int]:
    """The next tile (and overlap) to try after running out of memory with one tile."""
    if tile // 2 < 2 * stride:
        raise SemSegError("out of GPU memory even with one small tile; use --device cpu, a "
                          "smaller --tile or a smaller model")
    tile = round_up(tile // 2, stride)
    overlap = min(overlap, max(0, (tile // 4) // stride * stride))
    return tile, overlap


def run_local(job: SegmentJob, *, should_stop: Callable[[], bool] | None = None,
              ) -> Generator[PredictProgress, None, SegmentationResult]:
    """Run a prepared job in this process (see :func:`iter_segment`)."""
    settings, plan, device = job.settings, job.plan, job.device
    sink = job.make_sink()
    writer = BackgroundWriter(sink.write)
    completed = False
    try:
        done_before = sink.done_chunks()
        grid = job.grid()
        wanted = {p: {c for c in grid.chunks() if (p,) + c not in done_before}
                  for p in range(job.source.n_planes)}
        n_wanted = sum(len(w) for w in wanted.values())
        total = sum(len(grid.tiles_for(wanted[p])) for p in wanted if wanted[p])
        predictor = TilePredictor(job.model, device, job.normalization, amp=settings.amp,
                                  scale=plan.scale, compile=settings.compile,
                                  tta=settings.tta)
        done = 0
        started = time.perf_counter()
        note = f" (resuming: {len(done_before)} chunks already done)" if done_before else ""
        yield PredictProgress(0, total, message=f"{total} tiles of {plan.tile} px, "
                              f"{n_wanted} chunks on {device}{note}")
        with reuse_freed_memory(device.type == "cpu"):
            for p in range(job.source.n_planes):
                tile, overlap = plan.tile, plan.overlap
                plane_grid = grid
                while wanted[p]:
                    try:
                        for n, chunks in iter_plane(
                                job.source, p, plane_grid, predictor, set(wanted[p]),
                                plan.batch_size, probabilities=settings.probabilities,
                                uncertainty=settings.uncertainty,
                                label_dtype=job.layout.label_dtype):
                            for ch in chunks:
                                writer.put(ch)
                                wanted[p].discard((ch.region[0].start // plan.chunk,
                                                   ch.region[1].start // plan.chunk))
                            done += n
                            rate = done / max(time.perf_counter() - started, 1e-9)
                            yield PredictProgress(min(done, total), total, chunks,
                                                  message=f"{rate:.2f} tiles/s")
                            if should_stop is not None and should_stop():
                                raise Cancelled("segmentation cancelled")
                    except _TileTooLarge:
                        tile, overlap = _halve_tile_size(tile, plan.overlap,
                                                         job.model.metadata.stride)
                        plane_grid = job.grid(tile, overlap)
                        yield PredictProgress(min(done, total), total,
                                              message=f"out of memory: tile now {tile}")
        writer.flush()
        result = sink.finish()
        completed = True
        return result
    finally:
        writer.close()  # chunks already computed are written: a resume keeps them
        if not completed:
            sink.abort()
        free_memory(device)


def iter_segment(image: Any, model: SemSegModel | str | os.PathLike,
                 settings: PredictSettings | None = None, *, output: Any = None,
                 should_stop: Callable[[], bool] | None = None, client: Any = None,
                 **options: Any) -> Generator[PredictProgress, None, SegmentationResult]:
    """Segment ``image``; yield :class:`PredictProgress` after every batch; return the result.

    Every check (file, model, channels, tile, output) runs before the first tile is read. A run
    that is cancelled (``should_stop`` returns True, or the generator is closed) or fails leaves
    at most a ``<output>.partial`` store (which ``resume=True`` continues), never a file under
    the output name.

    With ``client`` (a ``dask.distributed.Client``) the chunks are computed by the cluster's
    workers (see :mod:`napari_semseg.core.distributed`); progress then counts chunks.

    Parameters are those of :func:`segment`.
    """
    settings = merge(PredictSettings, settings, options).validated()
    if client is not None:
        from .distributed import iter_segment_distributed

        return (yield from iter_segment_distributed(image, model, settings, output=output,
                                                    client=client, should_stop=should_stop))
    job = prepare(image, model, settings, output)
    if isinstance(job, SegmentationResult):
        yield PredictProgress(0, 0, message=f"{job.path} is already complete")
        return job
    return (yield from run_local(job, should_stop=should_stop))


def segment(image: Any, model: SemSegModel | str | os.PathLike, *, tile: int | None = None,
            overlap: int | None = None, device: str = "auto", batch_size: int | None = None,
            output: Any = None, probabilities: bool = False, uncertainty: bool = False,
            callback: Callable[[PredictProgress], Any] | None = None,
            settings: PredictSettings | None = None, client: Any = None,
            **options: Any) -> SegmentationResult:
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
    client
        A ``dask.distributed.Client``: compute on its workers. The image and the model should
        then be files all workers can read, and ``output`` a zarr path they can write.
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
    return drive(iter_segment(image, model, settings, output=output, client=client, **options),
                 callback)
