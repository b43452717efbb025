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
SHUTDOWN_SECONDS = 60.0  # how long a closing widget waits for its job to stop
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


def call_safely(callback: Callable[[Any], None], value: Any) -> None:
    """Call a main-thread handler; a widget deleted meanwhile (its viewer closed) is no crash.

    PyQt aborts the interpreter on an exception escaping a slot; a handler touching a Qt
    object whose C++ side is gone raises ``RuntimeError: wrapped C/C++ object ... deleted``.
    """
    try:
        callback(value)
    except RuntimeError as exc:
        if "deleted" not in str(exc):
            raise
        log.debug("napari-semseg: a job event arrived after its widget was deleted: %s", exc)


class Job:
    """A generator job in a napari ``GeneratorWorker`` with a stop flag.

    A job ends once: its outcome is handled exactly once on the main thread (``on_done``),
    either when the worker returns or earlier by :meth:`shutdown` (the viewer or the dock is
    closing); events and outcomes arriving after that are ignored.

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
        self._on_event, self._on_done = on_event, on_done
        self._ended = threading.Event()  # set in the worker thread when the job returned
        self._thread_outcome: Outcome | None = None

        def run() -> Generator[Any, None, Outcome]:
            lower_thread_priority()
            try:
                self._thread_outcome = yield from guarded(lambda: job(self.stop_event.is_set))
            finally:
                self._ended.set()
            return self._thread_outcome

        self.worker = create_worker(run, _start_thread=False)
        self.worker.yielded.connect(self._event)
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

    def shutdown(self, timeout: float = SHUTDOWN_SECONDS) -> bool:
        """Stop the job, wait (blocking) until its worker returned and handle its outcome now.

        For a closing viewer or dock: nothing of the job runs after this. Returns False if the
        worker did not return within ``timeout`` (its outcome is then taken as cancelled).
        """
        if self.done:
            return True
        self.stop()
        returned = self._ended.wait(timeout)
        if self.outcome is None:
            self.outcome = (self._thread_outcome if returned else None) or Outcome(cancelled=True)
        self._end()
        return returned

    def _event(self, event: Any) -> None:
        if not self.done:  # events queued behind the end are stale
            call_safely(self._on_event, event)

    def _returned(self, outcome: Outcome) -> None:
        if not self.done:
            self.outcome = outcome

    def _finished(self) -> None:
        if self.done:  # already ended by shutdown()
            return
        if self.outcome is None:  # the worker was aborted without returning
            self.outcome = Outcome(cancelled=True)
        self._end()

    def _end(self) -> None:
        self.done = True  # first: whatever the handler does, the job has ended once
        call_safely(self._on_done, self.outcome)
