"""Strokes painted while training: handed to the trainer as copies, used from the next epoch.

A :class:`StrokeFeed` watches the annotation layer of a running training; after a change it
waits :data:`FEED_DELAY_MS` (so a stroke being painted is sent once), then hands a copy of the
layer's data to the trainer through a core :class:`~napari_semseg.core.train.AnnotationFeed`.
The layer itself is never modified nor handed over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from ._layers import base_data

if TYPE_CHECKING:
    from ..core.train import AnnotationFeed

FEED_DELAY_MS = 1000  # strokes are handed to the trainer at most once a second


class StrokeFeed(QObject):
    """Hands the strokes of a watched Labels layer to a running training.

    ``sent`` fires (on the main thread) each time a copy was handed over.
    """

    sent = Signal()

    def __init__(self, parent: QObject | None = None, delay_ms: int = FEED_DELAY_MS) -> None:
        super().__init__(parent)
        self.feed: AnnotationFeed | None = None  # the feed of the latest training
        self._layer: Any = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(self._send)

    def start(self, layer: Any) -> AnnotationFeed:
        """Watch ``layer`` and return the new feed to give to the trainer."""
        from ..core.train import AnnotationFeed

        self.stop()
        self.feed = AnnotationFeed()
        self._layer = layer
        layer.events.paint.connect(self._changed)
        layer.events.data.connect(self._changed)
        return self.feed

    def stop(self) -> None:
        """Stop watching (the training ended); strokes not yet sent are not sent."""
        self._timer.stop()
        if self._layer is not None:
            self._layer.events.paint.disconnect(self._changed)
            self._layer.events.data.disconnect(self._changed)
            self._layer = None

    def _changed(self, *_: Any) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def _send(self) -> None:
        if self.feed is not None and self._layer is not None:
            self.feed.update(np.array(base_data(self._layer), copy=True))
            self.sent.emit()
