"""The client side of a cluster run (LocalCluster, SLURM/PBS via dask-jobqueue, ...).

The client checks everything and plans the run exactly as a local run would (same tile grid,
same output chunks, same ``<output>.partial`` store), then splits the chunks still to do into
rectangular blocks (:mod:`.blocks`) and submits one task per block (:mod:`.worker`).

Because tiles and their blending weights come from one global grid and each chunk sums its
tiles in the same order, a block computed on a worker is bit-identical to the same chunks of a
local run. Worker failures (missing model file, unreadable input chunk, an exception in the
model, out of memory) stop the run and reach the client as one :class:`SemSegError` line;
the partial store is kept so that ``resume=True`` computes only the chunks still missing.
"""

from __future__ import annotations

import inspect
import os
import tempfile
import uuid
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import Cancelled, SemSegError
from ..io import ImageSource
from ..models import SemSegModel, as_model, save_model
from ..progress import ChunkResult, PredictProgress
from ..settings import PredictSettings
from ..writers import SegmentationResult, Sink, ZarrSink
from .blocks import blocks_for, plan_blocks
from .job import SegmentJob, prepare
from .worker import BlockJob, run_block

POLL_SECONDS = 0.25
# The client plans on the CPU: workers pick their own device (and GPU batch size).
CLIENT_DEVICE = torch.device("cpu")


def model_path_for_workers(model: Any) -> str | None:
    """The model file as workers should open it (absolute), or None for a model object."""
    return str(Path(model).resolve()) if isinstance(model, (str, os.PathLike)) else None


def _model_bytes(model: SemSegModel) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(model, Path(tmp) / "model.safetensors")
        return path.read_bytes()


def _scheduler_info(client: Any) -> dict[str, Any]:
    """The scheduler's view of every worker (newer clients list only a few by default)."""
    try:
        accepts = "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):  # pragma: no cover
        accepts = False
    return client.scheduler_info(n_workers=-1) if accepts else client.scheduler_info()


def _threads_per_host(client: Any) -> dict[str, int]:
    """Worker threads per host name (to share each host's cores among its workers)."""
    hosts: dict[str, int] = {}
    addr_to_host = {}
    for addr, w in _scheduler_info(client).get("workers", {}).items():
        host = w.get("host") or addr.split("://")[-1].rsplit(":", 1)[0]
        hosts[host] = hosts.get(host, 0) + int(w.get("nthreads", 1))
        addr_to_host[addr] = host
    # the scheduler knows IP addresses; workers know their host names: map both
    try:
        names = client.run(lambda: __import__("socket").gethostname())
        return {hostname: hosts.get(addr_to_host.get(addr, ""), 1)
                for addr, hostname in names.items()}
    except Exception:  # pragma: no cover - very old distributed
        return {"*": max(hosts.values(), default=1)}


def _worker_threads(client: Any, timeout: float) -> int:
    try:
        client.wait_for_workers(1, timeout=timeout)
    except Exception as exc:
        raise SemSegError(f"the dask cluster at {client.scheduler.address} has no workers "
                          f"(waited {timeout:.0f} s); start workers or use --local-cluster N"
                          ) from exc
    workers = _scheduler_info(client).get("workers", {}).values()
    return sum(int(w.get("nthreads", 1)) for w in workers) or 1


def _image_for_workers(image: Any, client: Any) -> tuple[Any, Any]:
    """``(for the job, for each task)``: an absolute path for files; in-memory arrays are
    scattered once and handed to every task; zarr/dask arrays travel as references."""
    if isinstance(image, ImageSource):
        image = image.path if image.path is not None else image.data
    if isinstance(image, (str, os.PathLike)):
        return str(Path(image).resolve()), None
    if isinstance(image, np.ndarray):
        return None, client.scatter(image, broadcast=False, hash=False)
    return image, None


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


class _ClusterRun:
    """The tasks of one run on ``client``: submitted, collected, or cancelled."""

    def __init__(self, client: Any, job: SegmentJob, sink: Sink) -> None:
        self.client, self.job, self.sink = client, job, sink
        self.token = uuid.uuid4().hex
        self.event: Any = None
        self.futures: list[Any] = []
        # workers write straight into the output's store when there is one on disk
        self.store = (str(sink.path) if job.output is not None and isinstance(sink, ZarrSink)
                      else None)

    def block_job(self, image: Any, model: Any, model_path: str | None) -> BlockJob:
        """The run as the workers see it; also creates the run's cancel event."""
        from distributed import Event

        job = self.job
        self.event = Event(f"napari-semseg-cancel-{self.token}", client=self.client)
        return BlockJob(
            image=image, channel_axis=job.source.channel_axis, model_path=model_path,
            model_digest=job.info["model"]["digest"], settings=job.settings, plan=job.plan,
            layout=job.layout, normalization=job.normalization, store=self.store,
            cancel_event=self.event.name, threads_per_host=_threads_per_host(self.client))

    def submit(self, image: Any, model: Any, n_threads: int, blocks_per_thread: int,
               done_before: set) -> int:
        """Submit one task per block of chunks still to do; return the number of chunks."""
        client, grid = self.client, self.job.grid()
        model_path = model_path_for_workers(model)
        model_bytes = None
        if model_path is None:  # a model object: broadcast its file once
            model_bytes = client.scatter(_model_bytes(as_model(model)), broadcast=True,
                                         hash=False)
        job_image, task_image = _image_for_workers(image, client)
        [job_future] = client.scatter([self.block_job(job_image, model, model_path)],
                                      broadcast=False, hash=False)
        n_blocks = blocks_for(grid.chunk_counts, n_threads, blocks_per_thread)
        tasks = [(p, block) for p in range(self.job.source.n_planes)
                 for block in plan_blocks([c for c in grid.chunks() if (p,) + c not in
                                           done_before], grid.chunk_counts, n_blocks)]
        self.futures = [client.submit(run_block, job_future, p, block, task_image, model_bytes,
                                      pure=False, retries=0,
                                      key=f"napari-semseg-block-{self.token}-{k}")
                        for k, (p, block) in enumerate(tasks)]
        return sum(len(b) for _, b in tasks)

    def collect(self, done: set[Any]) -> tuple[int, list[ChunkResult]]:
        """Summaries of finished tasks: chunks they computed, chunks they returned (written to
        the sink here). Raises the first task failure as one line."""
        n, chunks = 0, []
        for fut in done:
            if fut.status == "error":
                raise _worker_error(fut)
            if fut.status == "cancelled":
                raise SemSegError("a segmentation task was cancelled on the cluster (the "
                                  "scheduler restarted or lost its workers)")
            summary = fut.result()
            n += summary["chunks"]
            for ch in summary["results"]:
                self.sink.write(ch)
                chunks.append(ch)
        return n, chunks

    def cancel(self) -> None:
        """Tell running tasks to stop and drop the queued ones (the cluster may be gone)."""
        if self.event is not None:
            try:
                self.event.set()
            except Exception:  # pragma: no cover - cluster gone
                pass
        if self.futures:
            try:
                self.client.cancel(self.futures)
            except Exception:  # pragma: no cover
                pass


def _wait_for_tasks(run: _ClusterRun, total: int, done_before: set,
                    should_stop: Callable[[], bool] | None
                    ) -> Generator[PredictProgress, None, None]:
    """Poll the tasks; yield progress (in chunks) until all are done."""
    from distributed import wait

    pending = set(run.futures)
    finished_chunks = blocks_done = 0
    while pending:
        try:
            wait(pending, timeout=POLL_SECONDS, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        done_set = {f for f in pending if f.done()}
        pending -= done_set
        n, chunks_out = run.collect(done_set)
        blocks_done += len(done_set)
        finished_chunks += n
        progress = finished_chunks
        if run.store is not None:  # chunks of running tasks already on disk
            progress = max(progress, len(run.sink.done_chunks()) - len(done_before))
        yield PredictProgress(min(progress, total), total, chunks_out,
                              message=f"{blocks_done}/{len(run.futures)} blocks")
        if should_stop is not None and should_stop():
            raise Cancelled("segmentation cancelled")


def iter_segment_distributed(image: Any, model: Any, settings: PredictSettings, *,
                             output: Any = None, client: Any,
                             should_stop: Callable[[], bool] | None = None,
                             sink: Sink | None = None, blocks_per_thread: int = 4,
                             wait_for_workers: float = 30.0,
                             ) -> Generator[PredictProgress, None, Any]:
    """Segment on the workers of ``client``; yields progress (in chunks), returns the result.

    Same checks, plan, output, sink and resume behaviour as a local run. Raises
    :class:`SemSegError` (one line, naming the worker) as soon as a task fails.
    """
    job = prepare(image, model, settings, output, device=CLIENT_DEVICE, sink=sink)
    if isinstance(job, SegmentationResult):
        yield PredictProgress(0, 0, message=f"{job.path} is already complete")
        return job
    n_threads = _worker_threads(client, wait_for_workers)
    run = _ClusterRun(client, job, job.make_sink())
    completed = False
    try:
        done_before = run.sink.done_chunks()
        total = run.submit(image, model, n_threads, blocks_per_thread, done_before)
        note = f" (resuming: {len(done_before)} chunks already done)" if done_before else ""
        yield PredictProgress(0, total, message=f"{total} chunks in {len(run.futures)} blocks "
                              f"on {n_threads} worker threads{note}")
        yield from _wait_for_tasks(run, total, done_before, should_stop)
        result = run.sink.finish()
        completed = True
        return result
    finally:
        if not completed:
            run.cancel()
            run.sink.abort()
