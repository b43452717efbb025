"""The class panel of the Train widget: the annotation layer's classes as colour swatches.

One row per class: a swatch in the class colour (click it to paint that class: the annotation
layer is selected, its brush takes the class and the paint tool is chosen) and the class name
(edit it to rename the class). *Add class* appends a class with the next default colour.
Names and colours are written into the layer's metadata, features and colormap (what the
status bar, the writer and the trainer read), never into its pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QGridLayout, QLineEdit, QPushButton, QVBoxLayout, QWidget

from ._layers import KEY, class_colormap, class_features, default_colors, layer_classes

MAX_ROWS = 32  # beyond this the names field is the better editor


def _swatch(color: str, k: int, name: str) -> QPushButton:
    button = QPushButton(str(k))
    button.setObjectName(f"class_swatch_{k}")
    button.setFixedWidth(36)
    button.setToolTip(f"paint class {k} ({name})")
    button.setStyleSheet(f"background-color: {color}; color: black; font-weight: bold;")
    return button


def write_classes(layer: Any, names: list[str], colors: list[str]) -> None:
    """Store class names and colours in a Labels layer (metadata, features, colormap).

    The layer's pixels are not touched.
    """
    meta = dict(layer.metadata) if isinstance(layer.metadata, dict) else {}
    marker = dict(meta.get(KEY, {}))
    marker.update(class_names=list(names), class_colors=list(colors))
    meta[KEY] = marker
    layer.metadata = meta
    layer.features = class_features(names)
    layer.colormap = class_colormap(colors)


class ClassPanel(QWidget):
    """Swatches and names of the classes of one annotation layer.

    Parameters
    ----------
    viewer
        The napari viewer (to select the layer when a swatch is clicked).
    """

    renamed = Signal()

    def __init__(self, viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.layer: Any = None
        self.grid = QGridLayout()
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.add_button = QPushButton("Add class")
        self.add_button.setObjectName("add_class")
        self.add_button.setToolTip("add a class to the annotation layer (its name and colour; "
                                   "no pixel changes)")
        self.add_button.clicked.connect(self.add_class)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self.grid)
        layout.addWidget(self.add_button)
        self.show_layer(None)

    # view ------------------------------------------------------------------------------------
    def classes(self) -> tuple[list[str], list[str]]:
        """Names and colours of the shown layer's classes (at least two)."""
        if self.layer is None:
            return [], []
        names, _ = layer_classes(self.layer)
        painted = _largest_label(self.layer)
        return layer_classes(self.layer, max(len(names), painted, 2))

    def show_layer(self, layer: Any) -> None:
        """Show the classes of ``layer`` (None: an empty panel)."""
        self.layer = layer
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        names, colors = self.classes()
        for k, (name, color) in enumerate(zip(names[:MAX_ROWS], colors, strict=False), start=1):
            swatch = _swatch(color, k, name)
            swatch.clicked.connect(_bind(self.paint_with, k))
            field = QLineEdit(name)
            field.setObjectName(f"class_name_{k}")
            field.setToolTip(f"name of class {k}")
            field.editingFinished.connect(_bind(self._name_edited, k))
            self.grid.addWidget(swatch, k - 1, 0)
            self.grid.addWidget(field, k - 1, 1)
        self.add_button.setEnabled(layer is not None)

    # actions ---------------------------------------------------------------------------------
    def paint_with(self, k: int) -> None:
        """Select the annotation layer and paint with class ``k``."""
        if self.layer is None or self.layer not in self.viewer.layers:
            return
        self.viewer.layers.selection.active = self.layer
        self.layer.selected_label = k
        self.layer.mode = "paint"

    def rename(self, k: int, name: str) -> None:
        """Rename class ``k`` (1-based) in the layer's metadata; empty names are refused."""
        name = name.strip()
        names, colors = self.classes()
        if self.layer is None or not name or not 1 <= k <= len(names) or names[k - 1] == name:
            return
        names[k - 1] = name
        write_classes(self.layer, names, colors)
        self.renamed.emit()

    def add_class(self) -> None:
        """Append a class (name "class N", the next default colour)."""
        if self.layer is None:
            return
        names, colors = self.classes()
        names.append(f"class {len(names) + 1}")
        colors.append(default_colors(len(names))[-1])
        write_classes(self.layer, names, colors)
        self.show_layer(self.layer)
        self.renamed.emit()

    def _name_edited(self, k: int) -> None:
        field = self.findChild(QLineEdit, f"class_name_{k}")
        if field is not None:
            self.rename(k, field.text())


def _largest_label(layer: Any) -> int:
    """The largest value painted in a small layer (0 for big or lazy data: not scanned)."""
    import numpy as np

    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if not isinstance(data, np.ndarray) or data.size > 64_000_000 or data.size == 0:
        return 0
    return int(data.max())


def _bind(fn: Callable[[int], None], k: int) -> Callable[..., None]:
    return lambda *_: fn(k)
