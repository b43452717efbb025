"""Annotations handed over while training runs (e.g. painted in napari), used between epochs."""

from __future__ import annotations

import threading
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ...errors import SemSegError
from ..state import LoopState
from ..task import Task
from .base import Callback


class AnnotationFeed:
    """Thread-safe hand-over of new annotations to a running training.

    ``update`` may be called from any thread (e.g. the napari GUI while the user paints); the
    training picks the latest annotations up at the start of its next epoch. numpy arrays are
    copied on ``update`` so later painting does not race with the training.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: Any = None
        self.version = 0

    def update(self, annotations: Any) -> None:
        """Hand over annotations with the same structure as those given to the training."""
        if isinstance(annotations, (list, tuple)):
            annotations = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a
                           for a in annotations]
        elif isinstance(annotations, np.ndarray):
            annotations = np.array(annotations, copy=True)
        with self._lock:
            self._pending = annotations
            self.version += 1

    def take(self) -> Any:
        """The annotations handed over since the last call, or None."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending


@runtime_checkable
class TakesAnnotations(Protocol):
    """A task that can switch to new annotations between epochs."""

    def use_annotations(self, annotations: Any) -> None:
        """Check and use ``annotations``; raise :class:`SemSegError` to refuse them."""
        ...


class UseNewAnnotations(Callback):
    """At the start of each epoch, hand the feed's latest annotations to the task.

    The first step event of that epoch says whether they were used or why they were ignored
    (the training goes on with the previous ones).
    """

    def __init__(self, feed: AnnotationFeed) -> None:
        self.feed = feed

    def on_epoch_start(self, loop: LoopState, task: Task) -> None:
        pending = self.feed.take()
        if pending is None:
            return
        if not isinstance(task, TakesAnnotations):
            raise TypeError(f"{type(task).__name__} cannot take new annotations "
                            "(it has no use_annotations method)")
        try:
            task.use_annotations(pending)
        except SemSegError as exc:
            loop.say(f"new annotations ignored: {exc}")
        else:
            loop.say("using the new annotations")
