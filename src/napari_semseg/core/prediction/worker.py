"""The worker side of a cluster run: one dask task computes one block of chunks.

Each worker process loads the model once (a cache keyed by path and digest; a model object
given by the caller arrives once as safetensors bytes), uses its own GPU when it has one, else
the CPU with its share of the cores, and computes its block with the same
:func:`~napari_semseg.core.prediction.chunks.compute_chunks` as a local run, writing finished
chunks straight into the shared zarr store (or returning them when the run has no output file).
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..device import is_out_of_memory, resolve_device
from ..errors import Cancelled, SemSegError
from ..io import open_image
from ..memory import reuse_freed_memory
from ..models import SemSegModel, load_model
from ..normalize import Normalization
from ..progress import ChunkResult
from ..settings import PredictSettings
from ..writers import OutputLayout, ZarrSink
from .chunks import Chunk, compute_chunks
from .job import model_digest
from .pipeline import BackgroundWriter
from .plan import TilePlan, auto_batch_size
from .tile_predictor import TilePredictor

# per worker process: (model key) -> SemSegModel, and (model key, device, ...) -> TilePredictor
_MODELS: dict[tuple, SemSegModel] = {}
_PREDICTORS: dict[tuple, TilePredictor] = {}
_CACHE_LOCK = threading.Lock()
CANCEL_POLL_SECONDS = 0.5


@dataclass
class BlockJob:
    """What every task of one run needs (small; scattered to the workers once)."""

    image: Any                    # absolute path or array (None: given to each task, scattered)
    channel_axis: int | None
    model_path: str | None        # model file on a filesystem the workers share
    model_digest: str
    settings: PredictSettings
    plan: TilePlan                # as planned by the client (batch size: chosen per worker)
    layout: OutputLayout
    normalization: Normalization
    store: str | None             # zarr store the workers write into (None: return chunks)
    cancel_event: str | None = None
    threads_per_host: dict[str, int] = field(default_factory=dict)


def _worker_name() -> tuple[str, Any]:
    try:
        from distributed import get_worker

        w = get_worker()
        return w.address, w.name
    except (ImportError, ValueError):
        return "local", 0


def worker_device(requested: str, name: Any = 0) -> torch.device:
    """The device a worker uses: its own GPU when it has one, else the CPU.

    ``"auto"`` on a machine with several visible GPUs spreads workers over them by worker name
    (LocalCluster names workers 0, 1, ...); a single visible GPU (e.g. ``CUDA_VISIBLE_DEVICES``
    set by dask-cuda or the batch system) is used as is.
    """
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


def _read_model(job: BlockJob, model_bytes: bytes | None) -> SemSegModel:
    if model_bytes is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.safetensors"
            path.write_bytes(model_bytes)
            return load_model(path)
    if job.model_path is None:
        raise SemSegError("a block job needs the model's bytes or a model_path; it has neither")
    if not Path(job.model_path).exists():
        raise SemSegError(f"model file {job.model_path} does not exist on this worker; put "
                          "it on a filesystem all workers share")
    return load_model(job.model_path)


def _load_model(job: BlockJob, model_bytes: bytes | None) -> SemSegModel:
    key = (job.model_path, job.model_digest)
    with _CACHE_LOCK:
        model = _MODELS.get(key)
        if model is not None:
            return model
    model = _read_model(job, model_bytes)
    if model_digest(model) != job.model_digest:
        raise SemSegError(f"model file {job.model_path} on this worker differs from the one the "
                          "client read (changed since, or another file at the same path)")
    with _CACHE_LOCK:
        _MODELS.clear()  # one model per worker process at a time
        _MODELS[key] = model
    return model


def _predictor(job: BlockJob, device: torch.device,
               model_bytes: bytes | None = None) -> TilePredictor:
    s = job.settings
    key = (job.model_path, job.model_digest, str(device), s.amp, s.compile, s.tta,
           s.uncertainty_kind,
           job.plan.scale, repr(job.normalization))
    with _CACHE_LOCK:
        pred = _PREDICTORS.get(key)
    if pred is None:
        model = _load_model(job, model_bytes)
        pred = TilePredictor.for_settings(model, device, job.normalization, s, job.plan.scale)
        with _CACHE_LOCK:
            _PREDICTORS.clear()
            _PREDICTORS[key] = pred
    return pred


def _set_threads(job: BlockJob) -> None:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    share = job.threads_per_host.get(socket.gethostname()) or job.threads_per_host.get("*") or 1
    n = max(1, cpus // max(1, share))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _cancelled(job: BlockJob) -> Callable[[], bool]:
    """A check of the run's cancel event (at most a few scheduler round trips per second)."""
    if job.cancel_event is None:
        return lambda: False
    try:
        from distributed import Event

        event = Event(job.cancel_event)
    except (ImportError, ValueError):
        return lambda: False
    last_poll = [0.0]
    stopped = [False]

    def check() -> bool:
        now = time.monotonic()
        if now - last_poll[0] > CANCEL_POLL_SECONDS:
            last_poll[0] = now
            try:
                stopped[0] = bool(event.is_set())
            except Exception:  # the scheduler is gone: stop
                stopped[0] = True
        return stopped[0]

    return check


def run_block(job: BlockJob, plane: int, chunks: list[Chunk], image: Any = None,
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
        what = "out of memory" if is_out_of_memory(exc) else "failed"
        raise SemSegError(f"worker {address} {what} on plane {plane}, chunks {chunks[0]}..."
                          f"{chunks[-1]}: {type(exc).__name__}: {exc}") from None


def _run_block(job: BlockJob, plane: int, chunks: list[Chunk], name: Any,
               image: Any, model_bytes: bytes | None) -> dict[str, Any]:
    _set_threads(job)
    device = worker_device(job.settings.device, name)
    pred = _predictor(job, device, model_bytes)
    source = open_image(job.image if image is None else image, job.channel_axis,
                        expected_channels=pred.model.metadata.in_channels)
    sink = None
    wanted = set(chunks)
    if job.store is not None:
        sink = ZarrSink(Path(job.store), job.layout, {}, attach=True)
        done = sink.done_chunks()
        wanted = {c for c in wanted if (plane,) + c not in done}
    plan = replace(job.plan, batch_size=auto_batch_size(device, job.plan.tile,
                                                        job.settings.batch_size))
    results: list[ChunkResult] = []
    writer = BackgroundWriter(sink.write if sink is not None else results.append)
    try:
        _compute_block(job, source, plane, plan, pred, wanted, writer)
        writer.flush()
    finally:
        writer.close()
    return {"chunks": len(chunks), "worker": _worker_name()[0], "results": results}


def _compute_block(job: BlockJob, source: Any, plane: int, plan: TilePlan, pred: TilePredictor,
                   wanted: set[Chunk], writer: BackgroundWriter) -> None:
    stop = _cancelled(job)
    s = job.settings
    with reuse_freed_memory(pred.device.type == "cpu"):
        for step in compute_chunks(source, plane, plan, pred, wanted,
                                   probabilities=s.probabilities, uncertainty=s.uncertainty_kind,
                                   label_dtype=job.layout.label_dtype):
            for chunk in step.chunks:
                writer.put(chunk)
            if stop():
                raise Cancelled("cancelled by the client")
