"""Run a core job generator in a napari thread worker.

The job runs in a worker thread; its progress events arrive on the main thread through the
worker's ``yielded`` signal, and its outcome (result, user error, cancellation or crash) through
``returned``. The generator is wrapped so that no exception ever leaves the worker: napari would
otherwise show it as a traceback notification. User errors (:class:`SemSegError`) become one-line
messages; unexpected errors are logged with their traceback and shown as one line.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from ..core.errors import Cancelled, SemSegError

log = logging.getLogger("napari_semseg")
WORKER_NICE = 10  # niceness of job threads (Linux), so the viewer's thread wins the CPU


def lower_thread_priority(nice: int = WORKER_NICE) -> None:
    """Lower the priority of the calling thread and of the threads it starts (Linux only).

    A job (and the threads it starts: torch's intra-op pool, the tile prefetcher) then yields
    the CPU to the viewer's main thread, which keeps the viewer responsive on machines with few
    cores (measured on 2 cores: fewer and shorter stalls than at normal priority, both for the
    compute loop and for the Python-heavy set-up). Elsewhere this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (AttributeError, OSError):
        pass


@dataclass
class Outcome:
    """How a job ended: ``result`` (success), ``error`` (one line) or ``cancelled``."""

    result: Any = None
    error: str | None = None
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled


def error_text(exc: BaseException) -> str:
    """One line for the user: the SemSegError message, else ``Type: message``."""
    if isinstance(exc, SemSegError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def guarded(job: Callable[[], Generator[Any, None, Any]]) -> Generator[Any, None, Outcome]:
    """Run the generator made by ``job()``; turn every ending into an :class:`Outcome`."""
    try:
        result = yield from job()
    except Cancelled:
        return Outcome(cancelled=True)
    except SemSegError as exc:
        return Outcome(error=error_text(exc))
    except Exception as exc:  # shown as one line; the traceback goes to the log
        log.exception("napari-semseg job failed")
        return Outcome(error=error_text(exc))
    return Outcome(result=result)


class Job:
    """A generator job in a napari ``GeneratorWorker`` with a stop flag.

    Parameters
    ----------
    job
        Called in the worker thread with a ``should_stop`` callable; returns the job generator.
    on_event, on_done
        Main-thread callbacks for each yielded event and for the final :class:`Outcome`.
    """

    def __init__(self, job: Callable[[Callable[[], bool]], Generator[Any, None, Any]],
                 on_event: Callable[[Any], None], on_done: Callable[[Outcome], None]) -> None:
        from napari.qt.threading import create_worker

        self.stop_event = threading.Event()
        self.outcome: Outcome | None = None
        self.done = False
        self._on_done = on_done

        def run() -> Generator[Any, None, Outcome]:
            lower_thread_priority()
            return (yield from guarded(lambda: job(self.stop_event.is_set)))

        self.worker = create_worker(run, _start_thread=False)
        self.worker.yielded.connect(on_event)
        self.worker.returned.connect(self._returned)
        self.worker.finished.connect(self._finished)

    def start(self) -> Job:
        self.worker.start()
        return self

    def stop(self) -> None:
        """Ask the job to stop at its next check (within one batch or step)."""
        self.stop_event.set()

    @property
    def running(self) -> bool:
        """True until the outcome has been handled on the main thread."""
        return not self.done

    def _returned(self, outcome: Outcome) -> None:
        self.outcome = outcome

    def _finished(self) -> None:
        if self.outcome is None:  # the worker was aborted without returning
            self.outcome = Outcome(cancelled=True)
        try:
            self._on_done(self.outcome)
        finally:
            self.done = True
