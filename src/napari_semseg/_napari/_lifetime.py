"""Notice when a widget's jobs must end: its viewer is closing, or it left its dock.

Closing the viewer deletes the widgets' Qt objects while their jobs may still run; a job's
outcome then arrived in a handler touching deleted objects, and PyQt aborted Python. A
:class:`CloseWatcher` calls the widget's shutdown (stop the jobs, wait for them, mark unfinished
results "(incomplete)") while everything still exists: when the viewer's window or canvas gets
its close event, when the widget itself is closed, or when napari takes it out of its dock
(``remove_dock_widget`` reparents it to nothing).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QMainWindow, QWidget

log = logging.getLogger("napari_semseg")


def viewer_windows(widget: QWidget) -> list[QObject]:
    """The main window holding ``widget`` (docked) and its canvas widget (napari's QtViewer,
    which gets its close event first); empty while the widget is not docked."""
    window = widget.parentWidget()
    while window is not None and not isinstance(window, QMainWindow):
        window = window.parentWidget()
    if window is None:
        return []
    canvas = [w for w in window.findChildren(QWidget) if type(w).__name__ == "QtViewer"]
    return [*canvas[:1], window]


class CloseWatcher(QObject):
    """Calls ``on_close`` once, on the main thread, before the widget or its viewer goes away.

    Parameters
    ----------
    widget
        The plugin's dock widget (the watcher is its child and dies with it).
    on_close
        The widget's shutdown: must stop and wait for its jobs.
    """

    def __init__(self, widget: QWidget, on_close: Callable[[], None]) -> None:
        super().__init__(widget)
        # weak references only: the watcher must not keep the widget or the viewer alive
        self._widget_ref = weakref.ref(widget)
        self._on_close = weakref.WeakMethod(on_close)
        self.fired = False
        self._docked = widget.parent() is not None
        self._windows: list[weakref.ref] = []
        widget.installEventFilter(self)
        QTimer.singleShot(0, self._attach)  # napari docks the widget right after creating it

    def _attach(self) -> None:
        """Watch the viewer's windows, once the widget is docked in them."""
        widget = self._widget_ref()
        if self._windows or self.fired or widget is None:
            return
        try:
            windows = viewer_windows(widget)
        except RuntimeError:  # the widget is gone already
            return
        for obj in windows:
            obj.installEventFilter(self)
        self._windows = [weakref.ref(obj) for obj in windows]

    def _is_window(self, obj: QObject) -> bool:
        return any(ref() is obj for ref in self._windows)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt API)
        kind = event.type()
        mine = obj is self._widget_ref()
        if kind == QEvent.Type.Close and (mine or self._is_window(obj)):
            self.fire()
        elif mine and kind == QEvent.Type.Show:
            self._attach()
        elif mine and kind == QEvent.Type.ParentChange:
            docked = obj.parent() is not None
            if self._docked and not docked:  # taken out of its dock (dock closed)
                self.fire()
            self._docked = docked
            self._attach()
        return False

    def fire(self) -> None:
        """Run the shutdown now (once)."""
        if self.fired:
            return
        self.fired = True
        for ref in self._windows:
            obj = ref()
            try:
                if obj is not None:
                    obj.removeEventFilter(self)
            except RuntimeError:  # already deleted
                pass
        self._windows = []
        on_close = self._on_close()
        if on_close is None:
            return
        try:
            on_close()
        except Exception:  # never let a closing viewer crash Python
            log.exception("napari-semseg: shutting a widget down failed")
