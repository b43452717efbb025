"""Segmentation on a dask.distributed cluster (LocalCluster, SLURM/PBS via dask-jobqueue, ...).

The client checks everything and plans the run exactly as a local run would (same tile grid,
same output chunks, same ``<output>.partial`` store), then splits the chunks still to do into
rectangular blocks and submits one task per block. Each worker

* loads the model once from the model *file* (a per-process cache keyed by path and digest;
  a model object given by the caller is broadcast once to the workers as safetensors bytes), so
  weights never travel with the tasks;
* uses its own GPU when it has one (``cuda:<worker index mod GPU count>`` unless
  ``CUDA_VISIBLE_DEVICES`` already gives it one), else the CPU with its share of the cores;
* computes the tiles that cover its block (tiles on a block border are computed by both
  neighbours) and writes finished chunks straight into the zarr store, with a done marker each.

Because tiles and their blending weights come from one global grid and each chunk sums its
tiles in the same order, a block computed on a worker is bit-identical to the same chunks of a
local run. Worker failures (missing model file, unreadable input chunk, an exception in the
model, out of memory) stop the run and reach the client as one :class:`SemSegError` line;
the partial store is kept so that ``resume=True`` computes only the chunks still missing.
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import Cancelled, SemSegError
from .progress import ChunkResult, PredictProgress
from .settings import PredictSettings
from .tiling import TileGrid

POLL_SECONDS = 0.25

# per worker process: (model key) -> SemSegModel, and (model key, device, ...) -> TilePredictor
_MODELS: dict[tuple, Any] = {}
_PREDICTORS: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()


@dataclass
class BlockJob:
    """What every task of one run needs (small; scattered to the workers once)."""

    image: Any                    # absolute path or array (None: given to each task, scattered)
    channel_axis: int | None
    model_path: str | None        # model file on a filesystem the workers share
    model_digest: str
    settings: PredictSettings
    tile: int
    overlap: int
    margin: int
    chunk: int
    scale: float
    layout: Any                   # writers.OutputLayout
    normalization: Any            # normalize.Normalization
    store: str | None             # zarr store the workers write into (None: return chunks)
    cancel_event: str | None = None
    threads_per_host: dict[str, int] = field(default_factory=dict)


def plan_blocks(chunks: Iterable[tuple[int, int]], counts: tuple[int, int],
                n_blocks: int) -> list[list[tuple[int, int]]]:
    """Group chunks into rectangular blocks of the chunk grid (``counts`` = rows, cols).

    Tiles on block borders are computed twice, so blocks are made as large and square as the
    wanted number of blocks allows: among block shapes giving at least ``n_blocks`` blocks, the
    one with the fewest tiles in total (a block of ``h x w`` chunks needs ``(h + 1) x (w + 1)``
    tiles, one row/column less at the image's top/left edge). Blocks list their chunks in
    raster order; empty blocks are dropped.
    """
    chunks = sorted(set(chunks))
    if not chunks:
        return []
    rows, cols = counts
    n_blocks = max(1, min(n_blocks, len(chunks)))
    best: tuple[float, int, int, int] | None = None
    for bh in range(1, rows + 1):
        for bw in range(1, cols + 1):
            nb = math.ceil(rows / bh) * math.ceil(cols / bw)
            if nb < n_blocks:
                continue
            nr, nc = math.ceil(rows / bh), math.ceil(cols / bw)
            cost = (rows + nr - 1) * (cols + nc - 1)  # tiles, border tiles counted twice
            key = (cost, -nb, abs(bh - bw), bh)
            if best is None or key < best[:4]:
                best = (cost, -nb, abs(bh - bw), bh, bw)  # type: ignore[assignment]
    if best is None:
        bh = bw = 1
    else:
        bh, bw = best[3], best[4]  # type: ignore[misc]
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for ci, cj in chunks:
        groups.setdefault((ci // bh, cj // bw), []).append((ci, cj))
    return [groups[k] for k in sorted(groups)]


def _block_tiles(counts: tuple[int, int], n_blocks: int) -> float:
    """Tiles computed (relative to a local run) when the chunk grid is cut into ``n_blocks``."""
    rows, cols = counts
    best = math.inf
    for bh in range(1, rows + 1):
        for bw in range(1, cols + 1):
            nr, nc = math.ceil(rows / bh), math.ceil(cols / bw)
            if nr * nc < n_blocks:
                continue
            # a block needs one more tile row/column than it has chunks, except at the top/left
            best = min(best, (rows + nr - 1) * (cols + nc - 1))
    return best / (rows * cols)


def blocks_for(counts: tuple[int, int], n_threads: int, per_thread: int = 4,
               max_extra: float = 0.10) -> int:
    """How many blocks to cut a plane into: up to ``per_thread`` per worker thread (balance,
    finer resume), as long as the tiles computed twice on block borders stay within
    ``max_extra`` (10 %) of the plane's tiles; at least one block per worker thread."""
    n_chunks = counts[0] * counts[1]
    for k in range(per_thread, 1, -1):
        n = k * n_threads
        if n <= n_chunks and _block_tiles(counts, n) <= 1 + max_extra:
            return n
    return max(1, min(n_threads, n_chunks))


# ------------------------------------------------------------------------------------------
# worker side


def _worker_name() -> tuple[str, Any]:
    try:
        from distributed import get_worker

        w = get_worker()
        return w.address, w.name
    except (ImportError, ValueError):
        return "local", 0


def worker_device(requested: str, name: Any = 0) -> Any:
    """The device a worker uses: its own GPU when it has one, else the CPU.

    ``"auto"`` on a machine with several visible GPUs spreads workers over them by worker name
    (LocalCluster names workers 0, 1, ...); a single visible GPU (e.g. ``CUDA_VISIBLE_DEVICES``
    set by dask-cuda or the batch system) is used as is.
    """
    import torch

    from .device import resolve_device

    if requested.lower() != "auto" or not torch.cuda.is_available():
        return resolve_device(requested)
    count = torch.cuda.device_count()
    if count <= 1:
        return torch.device("cuda:0")
    try:
        index = int(name)
    except (TypeError, ValueError):
        index = abs(hash(str(name)))
    return torch.device(f"cuda:{index % count}")


def _load_model(job: BlockJob, model_bytes: bytes | None) -> Any:
    from .models import load_model

    key = (job.model_path, job.model_digest)
    with _CACHE_LOCK:
        model = _MODELS.get(key)
        if model is not None:
            return model
    if model_bytes is not None:
        import tempfile

        data = model_bytes
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.safetensors"
            path.write_bytes(data)
            model = load_model(path)
    else:
        if not Path(job.model_path).exists():
            raise SemSegError(f"model file {job.model_path} does not exist on this worker; put "
                              "it on a filesystem all workers share")
        model = load_model(job.model_path)
    from .predict import model_digest

    if model_digest(model) != job.model_digest:
        raise SemSegError(f"model file {job.model_path} on this worker differs from the one the "
                          "client read (changed since, or another file at the same path)")
    with _CACHE_LOCK:
        _MODELS.clear()  # one model per worker process at a time
        _MODELS[key] = model
    return model


def _predictor(job: BlockJob, device: Any, model_bytes: bytes | None = None) -> Any:
    from .predict import TilePredictor

    s = job.settings
    key = (job.model_path, job.model_digest, str(device), s.amp, s.compile, s.tta, job.scale)
    with _CACHE_LOCK:
        pred = _PREDICTORS.get(key)
    if pred is None:
        model = _load_model(job, model_bytes)
        pred = TilePredictor(model, device, job.normalization, amp=s.amp, scale=job.scale,
                             compile=s.compile, tta=s.tta)
        with _CACHE_LOCK:
            _PREDICTORS.clear()
            _PREDICTORS[key] = pred
    return pred


def _set_threads(job: BlockJob) -> None:
    import socket

    import torch

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    share = job.threads_per_host.get(socket.gethostname()) or job.threads_per_host.get("*") or 1
    n = max(1, cpus // max(1, share))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _cancelled(job: BlockJob) -> Callable[[], bool]:
    if job.cancel_event is None:
        return lambda: False
    try:
        from distributed import Event

        event = Event(job.cancel_event)
    except (ImportError, ValueError):
        return lambda: False
    last = [0.0, False]

    def check() -> bool:  # at most a few scheduler round trips per second
        now = time.monotonic()
        if now - last[0] > 0.5:
            last[0] = now
            try:
                last[1] = bool(event.is_set())
            except Exception:  # the scheduler is gone: stop
                last[1] = True
        return last[1]

    return check


def run_block(job: BlockJob, plane: int, chunks: list[tuple[int, int]], image: Any = None,
              model_bytes: bytes | None = None) -> dict[str, Any]:
    """Compute ``chunks`` of ``plane`` on this worker (a dask task); write them into the store.

    ``image`` and ``model_bytes`` (scattered once, passed to every task) stand in for
    ``job.image`` and the model file when the caller gave in-memory objects.

    Returns a summary ``{"chunks", "worker", "results"}`` (``results``: the chunks
    themselves when the run has no output file). Any failure is raised as a
    :class:`SemSegError` naming the worker.
    """
    address, name = _worker_name()
    try:
        return _run_block(job, plane, chunks, name, image, model_bytes)
    except Cancelled:
        return {"chunks": 0, "worker": address, "results": [], "cancelled": True}
    except SemSegError as exc:
        raise SemSegError(f"worker {address}: {exc}") from None
    except Exception as exc:
        from .device import is_out_of_memory

        what = "out of memory" if is_out_of_memory(exc) else "failed"
        raise SemSegError(f"worker {address} {what} on plane {plane}, chunks {chunks[0]}..."
                          f"{chunks[-1]}: {type(exc).__name__}: {exc}") from None


def _run_block(job: BlockJob, plane: int, chunks: list[tuple[int, int]], name: Any,
               image: Any, model_bytes: bytes | None) -> dict[str, Any]:
    from .io import open_image
    from .predict import BackgroundWriter, auto_batch_size
    from .writers import ZarrSink

    _set_threads(job)
    device = worker_device(job.settings.device, name)
    pred = _predictor(job, device, model_bytes)
    source = open_image(job.image if image is None else image, job.channel_axis,
                        expected_channels=pred.model.metadata.in_channels)
    stride = pred.model.metadata.stride
    sink = None
    wanted = set(chunks)
    if job.store is not None:
        sink = ZarrSink(Path(job.store), job.layout, {}, attach=True)
        done = sink.done_chunks()
        wanted = {c for c in wanted if (plane,) + c not in done}
    batch = auto_batch_size(device, job.tile, job.settings.batch_size)
    stop = _cancelled(job)
    results: list[ChunkResult] = []
    writer = BackgroundWriter(sink.write if sink is not None else results.append)
    try:
        _compute_block(job, source, plane, wanted, pred, stride, batch, stop, writer)
        writer.flush()
    finally:
        writer.close()
    return {"chunks": len(chunks), "worker": _worker_name()[0], "results": results}


def _compute_block(job: BlockJob, source: Any, plane: int, wanted: set[tuple[int, int]],
                   pred: Any, stride: int, batch: int, stop: Callable[[], bool],
                   writer: Any) -> None:
    from .memory import reuse_freed_memory
    from .predict import _halve_tile_size, _TileTooLarge, iter_plane

    tile, overlap, margin = job.tile, job.overlap, job.margin
    with reuse_freed_memory(pred.device.type == "cpu"):
        while wanted:
            grid = TileGrid.plan(source.plane_shape, tile, overlap, stride, job.chunk, margin)
            try:
                for _n, finished in iter_plane(source, plane, grid, pred, set(wanted), batch,
                                               probabilities=job.settings.probabilities,
                                               uncertainty=job.settings.uncertainty,
                                               label_dtype=job.layout.label_dtype):
                    for ch in finished:
                        writer.put(ch)
                        wanted.discard((ch.region[0].start // job.chunk,
                                        ch.region[1].start // job.chunk))
                    if stop():
                        raise Cancelled("cancelled by the client")
            except _TileTooLarge:
                tile, overlap = _halve_tile_size(tile, job.overlap, stride)
                margin = overlap // 4


# ------------------------------------------------------------------------------------------
# client side


def _threads_per_host(client: Any) -> dict[str, int]:
    """Worker threads per host name (to share each host's cores among its workers)."""
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) \
        else client.scheduler_info()
    hosts: dict[str, int] = {}
    addr_to_name = {}
    for addr, w in info.get("workers", {}).items():
        host = w.get("host") or addr.split("://")[-1].rsplit(":", 1)[0]
        hosts[host] = hosts.get(host, 0) + int(w.get("nthreads", 1))
        addr_to_name[addr] = host
    # the scheduler knows IP addresses; workers know their host names: map both
    try:
        names = client.run(lambda: __import__("socket").gethostname())
        out: dict[str, int] = {}
        for addr, hostname in names.items():
            out[hostname] = hosts.get(addr_to_name.get(addr, ""), 1)
        return out
    except Exception:  # pragma: no cover - very old distributed
        return {"*": max(hosts.values(), default=1)}


def _accepts_n_workers(client: Any) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def _worker_threads(client: Any, timeout: float) -> int:
    try:
        client.wait_for_workers(1, timeout=timeout)
    except Exception as exc:
        raise SemSegError(f"the dask cluster at {client.scheduler.address} has no workers "
                          f"(waited {timeout:.0f} s); start workers or use --local-cluster N"
                          ) from exc
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) \
        else client.scheduler_info()
    return sum(int(w.get("nthreads", 1)) for w in info.get("workers", {}).values()) or 1


def _image_for_workers(image: Any, client: Any) -> tuple[Any, Any]:
    """``(for the job, for each task)``: an absolute path for files; in-memory arrays are
    scattered once and handed to every task; zarr/dask arrays travel as references."""
    from .io import ImageSource

    if isinstance(image, ImageSource):
        image = image.path if image.path is not None else image.data
    if isinstance(image, (str, os.PathLike)):
        return str(Path(image).resolve()), None
    if isinstance(image, np.ndarray):
        return None, client.scatter(image, broadcast=False, hash=False)
    return image, None


def iter_segment_distributed(image: Any, model: Any, settings: PredictSettings, *,
                             output: Any = None, client: Any,
                             should_stop: Callable[[], bool] | None = None,
                             blocks_per_thread: int = 4, wait_for_workers: float = 30.0,
                             ) -> Generator[PredictProgress, None, Any]:
    """Segment on the workers of ``client``; yields progress (in chunks), returns the result.

    Same checks, plan, output and resume behaviour as a local run. Raises
    :class:`SemSegError` (one line, naming the worker) as soon as a task fails.
    """
    from distributed import Event, wait

    from .models import as_model
    from .predict import prepare
    from .writers import SegmentationResult

    model_path = _model_path_for_workers(model)
    job = prepare(image, model, settings, output, device=_client_device(settings))
    if isinstance(job, SegmentationResult):
        yield PredictProgress(0, 0, message=f"{job.path} is already complete")
        return job
    n_threads = _worker_threads(client, wait_for_workers)
    sink = job.make_sink()
    completed = False
    event = None
    futures: list[Any] = []
    try:
        done_before = sink.done_chunks()
        grid = job.grid()
        model_bytes = None
        if model_path is None:  # a model object: broadcast its file once
            model_bytes = client.scatter(_model_bytes(as_model(model)), broadcast=True,
                                         hash=False)
        token = uuid.uuid4().hex
        event = Event(f"napari-semseg-cancel-{token}", client=client)
        store = str(sink.path) if job.output is not None else None
        job_image, task_image = _image_for_workers(image, client)
        block_job = BlockJob(
            image=job_image, channel_axis=job.source.channel_axis,
            model_path=model_path, model_digest=job.info["model"]["digest"],
            settings=job.settings,
            tile=job.plan.tile, overlap=job.plan.overlap, margin=job.plan.margin,
            chunk=job.plan.chunk, scale=job.plan.scale, layout=job.layout,
            normalization=job.normalization, store=store, cancel_event=event.name,
            threads_per_host=_threads_per_host(client))
        [job_future] = client.scatter([block_job], broadcast=False, hash=False)
        tasks = []
        for p in range(job.source.n_planes):
            wanted = [c for c in grid.chunks() if (p,) + c not in done_before]
            for block in plan_blocks(wanted, grid.chunk_counts,
                                     blocks_for(grid.chunk_counts, n_threads,
                                                blocks_per_thread)):
                tasks.append((p, block))
        total = sum(len(b) for _, b in tasks)
        futures = [client.submit(run_block, job_future, p, block, task_image, model_bytes,
                                 pure=False, retries=0, key=f"napari-semseg-block-{token}-{k}")
                   for k, (p, block) in enumerate(tasks)]
        note = f" (resuming: {len(done_before)} chunks already done)" if done_before else ""
        yield PredictProgress(0, total, message=f"{total} chunks in {len(futures)} blocks on "
                              f"{n_threads} worker threads{note}")
        finished_chunks = 0
        pending = set(futures)
        blocks_done = 0
        while pending:
            try:
                wait(pending, timeout=POLL_SECONDS, return_when="FIRST_COMPLETED")
            except TimeoutError:
                pass
            done_set = {f for f in pending if f.done()}
            pending -= done_set
            chunks_out: list[ChunkResult] = []
            for fut in done_set:
                if fut.status == "error":
                    raise _worker_error(fut)
                if fut.status == "cancelled":
                    raise SemSegError("a segmentation task was cancelled on the cluster (the "
                                      "scheduler restarted or lost its workers)")
                summary = fut.result()
                blocks_done += 1
                finished_chunks += summary["chunks"]
                for ch in summary["results"]:
                    sink.write(ch)
                    chunks_out.append(ch)
            progress = finished_chunks
            if store is not None:
                progress = max(progress, len(sink.done_chunks()) - len(done_before))
            yield PredictProgress(min(progress, total), total, chunks_out,
                                  message=f"{blocks_done}/{len(futures)} blocks")
            if should_stop is not None and should_stop():
                raise Cancelled("segmentation cancelled")
        result = sink.finish()
        completed = True
        return result
    finally:
        if not completed:
            if event is not None:
                try:
                    event.set()
                except Exception:  # pragma: no cover - cluster gone
                    pass
            if futures:
                try:
                    client.cancel(futures)
                except Exception:  # pragma: no cover
                    pass
            sink.abort()


def _model_path_for_workers(model: Any) -> str | None:
    """The model file as workers should open it (absolute), or None for a model object."""
    return str(Path(model).resolve()) if isinstance(model, (str, os.PathLike)) else None


def _client_device(settings: PredictSettings) -> Any:
    """The client plans on the CPU: workers pick their own device (and GPU batch size)."""
    import torch

    return torch.device("cpu")


def _model_bytes(model: Any) -> bytes:
    import tempfile

    from .models import save_model

    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(model, Path(tmp) / "model.safetensors")
        return path.read_bytes()


def _worker_error(fut: Any) -> SemSegError:
    """Turn a failed task into one clear line."""
    exc = fut.exception()
    name = type(exc).__name__
    if isinstance(exc, SemSegError):
        return SemSegError(str(exc))
    if name == "KilledWorker":
        return SemSegError("a dask worker died while segmenting (out of memory, or killed); "
                           "give the workers more memory or use a smaller --tile / --batch-size")
    return SemSegError(f"a worker failed: {name}: {exc}")
