"""Thread plumbing of a run: tile batches read ahead in a background thread, finished chunks
written behind in another, so that reading, computing and writing overlap."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..progress import ChunkResult


def prefetch(items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Produce ``items`` in a background thread, ``depth`` ahead; stops when the consumer stops.

    Closing the generator in the thread that iterates it waits for the reader to stop. A
    generator left unclosed may be finalized by the garbage collector in any thread, zarr's
    own I/O thread included, which the reader may be waiting on: there it only tells the
    reader to stop and never waits (waiting deadlocked cluster workers).
    """
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
    owner = threading.get_ident()
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
        while thread.is_alive() and threading.get_ident() == owner:
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
