"""Layout helpers that keep the docks usable on a laptop screen (1366x768).

A dock's content sits in a scroll area, so a dock never forces the viewer window to grow past
the screen; parts users look at only sometimes (the training plot, advanced settings) can be
folded away.
"""

from __future__ import annotations

from qtpy.QtWidgets import QFrame, QGroupBox, QScrollArea, QVBoxLayout, QWidget


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
