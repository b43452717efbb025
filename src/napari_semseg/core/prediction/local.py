"""Run a prepared job in this process: compute the chunks still missing, plane by plane, and hand
them to the sink in a background thread."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Generator

from ..device import free_memory
from ..errors import Cancelled, SemSegError
from ..memory import reuse_freed_memory
from ..progress import PredictProgress
from ..writers import SegmentationResult, Sink
from .chunks import Chunk, ComputeStep, compute_chunks
from .job import SegmentJob
from .pipeline import BackgroundWriter
from .tile_predictor import TilePredictor


def chunks_to_do(job: SegmentJob, done: set[tuple[int, int, int]]) -> dict[int, set[Chunk]]:
    """For every plane, the chunks not in ``done`` (``(plane, row, column)`` triples)."""
    chunks = job.grid().chunks()
    return {p: {c for c in chunks if (p,) + c not in done} for p in range(job.source.n_planes)}


class _TileCounter:
    """Progress in tiles, with the rate since the start."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.started = time.perf_counter()

    def event(self, step: ComputeStep) -> PredictProgress:
        if step.message:
            return PredictProgress(min(self.done, self.total), self.total, message=step.message)
        self.done += step.tiles
        rate = self.done / max(time.perf_counter() - self.started, 1e-9)
        return PredictProgress(min(self.done, self.total), self.total, step.chunks,
                               message=f"{rate:.2f} tiles/s")


def _first_event(job: SegmentJob, todo: dict[int, set[Chunk]], done_before: set
                 ) -> tuple[int, PredictProgress]:
    grid = job.grid()
    total = sum(len(grid.tiles_for(w)) for w in todo.values() if w)
    n_chunks = sum(len(w) for w in todo.values())
    note = f" (resuming: {len(done_before)} chunks already done)" if done_before else ""
    note += "".join(f"; warning: {w}" for w in job.warnings)
    return total, PredictProgress(0, total, message=f"{total} tiles of {job.plan.tile} px, "
                                  f"{n_chunks} chunks on {job.device}{note}")


def _compute(job: SegmentJob, sink: Sink, writer: BackgroundWriter,
             should_stop: Callable[[], bool] | None) -> Generator[PredictProgress, None, None]:
    """Compute every missing chunk; hand each to ``writer``; yield progress after each batch."""
    done_before = sink.done_chunks()
    todo = chunks_to_do(job, done_before)
    total, first = _first_event(job, todo, done_before)
    predictor = TilePredictor.for_settings(job.model, job.device, job.normalization,
                                           job.settings, job.plan.scale)
    counter = _TileCounter(total)
    yield first
    s = job.settings
    with reuse_freed_memory(job.device.type == "cpu"):
        for plane, wanted in todo.items():
            for step in compute_chunks(job.source, plane, job.plan, predictor, wanted,
                                       probabilities=s.probabilities,
                                       uncertainty=s.uncertainty_kind,
                                       label_dtype=job.layout.label_dtype):
                for chunk in step.chunks:
                    writer.put(chunk)
                yield counter.event(step)
                if should_stop is not None and should_stop():
                    raise Cancelled("segmentation cancelled")


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def run_local(job: SegmentJob, *, should_stop: Callable[[], bool] | None = None,
              ) -> Generator[PredictProgress, None, SegmentationResult]:
    """Run a prepared job in this process (see :func:`~napari_semseg.core.predict.iter_segment`).

    The sink's :meth:`~napari_semseg.core.writers.Sink.finish` is called when every chunk is
    written; on a cancel or an error its :meth:`~napari_semseg.core.writers.Sink.abort` is
    called after the chunks already computed were written (a resume keeps them).
    """
    sink = job.make_sink()
    writer = BackgroundWriter(sink.write)
    completed = False
    try:
        yield from _compute(job, sink, writer, should_stop)
        writer.flush()
        result = sink.finish()
        completed = True
        return result
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        writer.close()
        discard = getattr(sink, "discard", None)
        if discard is not None:
            discard()
        raise SemSegError(f"the disk is full: cannot write {job.output or 'the result'} "
                          f"({exc.strerror}); free some space or choose an output on another "
                          "disk; nothing incomplete was left") from exc
    finally:
        writer.close()  # chunks already computed are written: a resume keeps them
        if not completed:
            sink.abort()
        free_memory(job.device)
