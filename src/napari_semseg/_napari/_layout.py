"""Layout helpers that keep the docks usable on a laptop screen (1366x768).

A dock's content sits in a scroll area, so a dock never forces the viewer window to grow past
the screen; parts users look at only sometimes (the training plot, advanced settings) can be
folded away.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QDockWidget,
    QFrame,
    QGroupBox,
    QMainWindow,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)


def scrolling_layout(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a vertical scroll area and return the layout of its content."""
    content = QWidget()
    content.setObjectName("content")
    area = QScrollArea()
    area.setObjectName("scroll")
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(content)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return QVBoxLayout(content)


def foldable(title: str, inner: QWidget, open_: bool, name: str) -> QGroupBox:
    """A titled box with a check box that shows or hides ``inner``."""
    box = QGroupBox(title)
    box.setObjectName(name)
    box.setCheckable(True)
    box.setChecked(open_)
    QVBoxLayout(box).addWidget(inner)
    box.toggled.connect(inner.setVisible)
    inner.setVisible(open_)
    return box


MIN_CANVAS = 240  # narrowest canvas (px) the docks leave to the image
DOCK_WIDTH = 340  # preferred width of a dock: the canvas keeps the rest of a small window
DOCK_HEIGHT = 420


class FitsLaptop:
    """Mixin for a dock widget: a modest preferred size (napari lays docks out by it), so two
    docks never squeeze the canvas to nothing (a canvas 0 px wide cannot even be screenshot)."""

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        hint = super().sizeHint()
        return QSize(min(hint.width(), DOCK_WIDTH), min(hint.height(), DOCK_HEIGHT))

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        super().showEvent(event)
        QTimer.singleShot(0, lambda: make_room_for_canvas(self))


def make_room_for_canvas(widget: QWidget) -> None:
    """Narrow ``widget``'s dock (down to its minimum) when the viewer's canvas got narrower
    than :data:`MIN_CANVAS` pixels: on a small window the docks took all the width."""
    try:
        dock = widget.parentWidget()
        window = dock.parentWidget() if isinstance(dock, QDockWidget) else None
        if not isinstance(window, QMainWindow) or dock.isFloating():
            return
        central = window.centralWidget()
        lack = MIN_CANVAS - central.width() if central is not None else 0
        if lack <= 0:
            return
        width = max(dock.minimumSizeHint().width(), dock.width() - lack)
        window.resizeDocks([dock], [width], Qt.Orientation.Horizontal)
    except RuntimeError:  # closed meanwhile
        return
