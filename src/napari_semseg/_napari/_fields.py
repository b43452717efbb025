"""Small Qt fields used by both widgets: layer picker, device picker, model picker, status line."""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QWidget,
)

from ..core.errors import SemSegError
from ..core.settings import PredictSettings, option_fields
from ._registry import trained_models

RESULT_SUFFIX = "  (napari-semseg result)"


def is_plugin_result(layer: Any) -> bool:
    """True for layers the plugin made (results, previews), marked in their metadata."""
    from ._layers import marker

    return bool(marker(layer))


class LayerCombo(QComboBox):
    """Picks a layer of ``layer_type`` from the viewer; follows additions, removals, renames.

    The user's own layers come first; the plugin's results (:func:`is_plugin_result`) are
    listed last, marked, and never chosen automatically. With ``follow``, the field switches to
    a user layer of its type that is added to the viewer or selected in the layer list.
    """

    def __init__(self, viewer: Any, layer_type: type, parent: QWidget | None = None, *,
                 follow: bool = False) -> None:
        super().__init__(parent)
        self.viewer, self.layer_type, self.follow = viewer, layer_type, follow
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.moved.connect(self.refresh)
        viewer.layers.selection.events.active.connect(self._on_active)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _on_inserted(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self.refresh)
        self.refresh()
        if self.follow and self._wanted(layer):
            self.select(layer)

    def _on_active(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if self.follow and self.isEnabled() and self._wanted(layer):
            self.select(layer)

    def _wanted(self, layer: Any) -> bool:
        return isinstance(layer, self.layer_type) and not is_plugin_result(layer)

    def layers(self) -> list[Any]:
        """The layers offered: the user's first, then the plugin's results."""
        mine = [ly for ly in self.viewer.layers if isinstance(ly, self.layer_type)]
        return [ly for ly in mine if not is_plugin_result(ly)] + \
            [ly for ly in mine if is_plugin_result(ly)]

    def refresh(self, *_: Any) -> None:
        current = self.layer()
        self._layers = self.layers()
        self.blockSignals(True)
        self.clear()
        for layer in self._layers:
            self.addItem(layer.name + (RESULT_SUFFIX if is_plugin_result(layer) else ""))
        index = next((i for i, ly in enumerate(self._layers) if ly is current), None)
        if index is None:  # never fall onto a plugin result by itself
            index = next((i for i, ly in enumerate(self._layers) if self._wanted(ly)), -1)
        self.setCurrentIndex(index)
        self.blockSignals(False)
        if self.layer() is not current:
            self.currentIndexChanged.emit(self.currentIndex())

    def layer(self) -> Any:
        """The selected layer, or None."""
        i = self.currentIndex()
        layers = getattr(self, "_layers", [])
        return layers[i] if 0 <= i < len(layers) else None

    def select(self, layer: Any) -> None:
        self.refresh()
        for i, ly in enumerate(self._layers):
            if ly is layer:
                self.setCurrentIndex(i)

    def disconnect_viewer(self) -> None:
        """Stop following the viewer's layers (the widget is closing; safe to call twice)."""
        if getattr(self, "_disconnected", False):
            return
        self._disconnected = True
        for emitter, cb in ((self.viewer.layers.events.inserted, self._on_inserted),
                            (self.viewer.layers.events.removed, self.refresh),
                            (self.viewer.layers.events.moved, self.refresh),
                            (self.viewer.layers.selection.events.active, self._on_active)):
            emitter.disconnect(cb)
        for layer in self.viewer.layers:
            layer.events.name.disconnect(self.refresh)


class DeviceField(QWidget):
    """Device choice and, next to it, the device that will actually be used (or why not).

    The choices and the tooltip are those of the ``device`` field of ``settings_cls``.
    """

    def __init__(self, settings_cls: type = PredictSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        spec = option_fields(settings_cls)["device"]
        self.combo = QComboBox()
        self.combo.setObjectName("device")
        self.combo.addItems(spec.option.suggestions)
        self.combo.setToolTip(spec.help)
        self.label = QLabel()
        self.label.setObjectName("device_label")
        self.label.setWordWrap(True)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo)
        layout.addWidget(self.label, 1)
        self.combo.currentTextChanged.connect(self.update_label)
        self.update_label()

    @property
    def device(self) -> str:
        return self.combo.currentText()

    def set(self, name: str) -> None:
        if self.combo.findText(name) < 0:
            self.combo.addItem(name)
        self.combo.setCurrentText(name)

    def update_label(self, *_: Any) -> None:
        from ..core.device import describe_device

        try:
            self.label.setText(f"→ {describe_device(self.device)}")
            self.label.setStyleSheet("")
        except SemSegError:
            self.label.setText("not available here")
            self.label.setStyleSheet("color: #e06666")

    def check(self) -> None:
        """Raise :class:`SemSegError` if the chosen device is not available."""
        from ..core.device import resolve_device

        resolve_device(self.device)


def bundled_models() -> dict[str, Path]:
    """The sample models shipped with the package (``name -> path``), those present."""
    from napari_semseg.sample_data import sample_path

    out = {}
    for name, file in (("EM sample model", "em_model.safetensors"),
                       ("aerial sample model", "aerial_model.safetensors")):
        try:
            out[name] = sample_path(file)
        except FileNotFoundError:
            continue
    return out


_LOADS: OrderedDict[tuple, Future] = OrderedDict()
_LOADER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semseg-model-load")
CACHED_MODELS = 4


def preload(path: str | Path) -> Future:
    """Start loading a model file in a background thread (once per file version); the future
    holds the model or the error. Jobs reuse it, so pressing Segment does not wait for it."""
    from ..core.models import load_model
    from ._jobs import lower_thread_priority

    p = Path(path)
    try:
        stat = p.stat()
        key = (str(p.resolve()), stat.st_mtime_ns, stat.st_size)
    except OSError:
        key = (str(p), 0, 0)
    future = _LOADS.get(key)
    if future is None:
        def load() -> Any:
            lower_thread_priority()
            return load_model(p)

        future = _LOADS[key] = _LOADER.submit(load)
        while len(_LOADS) > CACHED_MODELS:
            _LOADS.popitem(last=False)
    else:
        _LOADS.move_to_end(key)
    return future


class ModelField(QWidget):
    """Choose a model: trained in this viewer, bundled with the package, or a file.

    Item data is ``("trained", name)`` or ``("file", path)``. Selecting a file reads only its
    header (fast) so a file that is not a model is reported at once.
    """

    changed = Signal()
    loaded = Signal()  # a model file finished loading in the background

    def __init__(self, viewer: Any, *, allow_new: bool = False, follow_trained: bool = True,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.allow_new = allow_new
        self.follow_trained = follow_trained
        self.combo = QComboBox()
        self.combo.setObjectName("model")
        self.combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(14)
        self.browse = QPushButton("File…")
        self.browse.setToolTip("open a .safetensors model file written by napari-semseg")
        self.browse.clicked.connect(self._browse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo, 1)
        layout.addWidget(self.browse)
        self._files: list[Path] = []
        self._items: list[tuple[str, Any]] = []
        self.registry = trained_models(viewer)
        self.registry.changed.connect(self._on_trained)
        self.combo.currentIndexChanged.connect(lambda *_: self.changed.emit())
        self.changed.connect(self._preload_choice)
        self.refresh()
        self._preload_choice()

    # choices -----------------------------------------------------------------------------
    def refresh(self) -> None:
        current = self.choice()
        items: list[tuple[str, tuple[str, Any]]] = []
        if self.allow_new:
            items.append(("new model", ("new", None)))
        for name in reversed(self.registry.names()):
            items.append((f"{name} (trained here)", ("trained", name)))
        for name, path in bundled_models().items():
            items.append((name, ("file", str(path))))
        for path in self._files:
            if ("file", str(path)) not in [d for _, d in items]:
                items.append((path.name, ("file", str(path))))
        self._items = [d for _, d in items]
        self.combo.blockSignals(True)
        self.combo.clear()
        for text, data in items:
            self.combo.addItem(text)
            self.combo.setItemData(self.combo.count() - 1, data[1] and str(data[1]),
                                   Qt.ItemDataRole.ToolTipRole)
        idx = self._items.index(current) if current in self._items else 0
        self.combo.setCurrentIndex(idx if self._items else -1)
        self.combo.blockSignals(False)
        if self.choice() != current:
            self.changed.emit()

    def _on_trained(self, name: str) -> None:
        self.refresh()
        if self.follow_trained:  # the Segment widget offers the newest model at once
            self.select(("trained", name))

    def choice(self) -> tuple[str, Any] | None:
        i = self.combo.currentIndex()
        return self._items[i] if 0 <= i < len(self._items) else None

    def choices(self) -> list[tuple[str, Any]]:
        return list(self._items)

    def select(self, choice: tuple[str, Any]) -> bool:
        if choice in self._items:
            self.combo.setCurrentIndex(self._items.index(choice))
            return True
        return False

    def set_file(self, path: str | Path) -> None:
        """Add a model file to the choices and select it (no check here; see :meth:`metadata`)."""
        path = Path(path)
        if path not in self._files:
            self._files.append(path)
        self.refresh()
        self.select(("file", str(path)))

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a napari-semseg model", "",
                                              "napari-semseg models (*.safetensors)")
        if path:
            self.set_file(path)

    # model access ----------------------------------------------------------------------
    def is_new(self) -> bool:
        choice = self.choice()
        return choice is not None and choice[0] == "new"

    def metadata(self) -> Any:
        """The chosen model's metadata (from the file header only); SemSegError if none/bad."""
        from ..core.models import read_metadata

        choice = self.choice()
        if choice is None:
            raise SemSegError("no model chosen: pick a model, open a model file (File…) or "
                              "train one in the Train widget")
        kind, ref = choice
        if kind == "trained":
            return self.registry.get(ref).metadata
        if kind == "file":
            return read_metadata(ref)
        return None

    def loader(self) -> Any:
        """A callable returning the model (call it in the worker: it may wait for the file to
        load). Files are loaded once, in the background, as soon as they are chosen."""
        kind, ref = self.choice() or (None, None)
        if kind == "trained":
            model = self.registry.get(ref)
            return lambda: model
        if kind == "file":
            future = preload(ref)
            return future.result
        return lambda: None

    def _preload_choice(self) -> None:
        kind, ref = self.choice() or (None, None)
        if kind == "file":
            try:
                self.metadata()  # only real model files are loaded
            except SemSegError:
                return
            future = preload(ref)
            if not future.done():  # tell the widget when it is ready (queued to the GUI thread)
                future.add_done_callback(self._emit_loaded)

    def _emit_loaded(self, _future: Future) -> None:
        try:
            self.loaded.emit()
        except RuntimeError:  # the widget was closed meanwhile
            pass

    def ready(self) -> bool:
        """True when the chosen model is in memory (a job would start computing at once)."""
        kind, ref = self.choice() or (None, None)
        if kind == "file":
            return preload(ref).done()
        return True

    def describe(self) -> str:
        try:
            meta = self.metadata()
        except SemSegError as exc:
            return str(exc)
        if meta is None:
            return "a new model (architecture and encoder below)"
        classes = ", ".join(meta.class_names)
        state = "" if self.ready() else " (loading…)"
        return (f"{meta.arch}/{meta.encoder}, {meta.in_channels} channel(s), "
                f"{meta.classes} classes: {classes}{state}")


def gui_wording(text: str) -> str:
    """Engine messages name CLI options (``--device``); the widgets' fields have the same names
    without dashes. Drop "(CLI: ...)" hints."""
    import re

    text = re.sub(r"\s*\(CLI: [^)]*\)", "", text)
    return re.sub(r"(?<![\w-])--([a-z][a-z-]*)", lambda m: m.group(1).replace("-", " "), text)


class StatusLine(QLabel):
    """A one-line status/error message under a widget's buttons."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("status")
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

    def info(self, text: str) -> None:
        self.setStyleSheet("")
        self.setText(text)

    def warning(self, text: str) -> None:
        """Shown in orange and as a napari warning notification (the job goes on)."""
        from napari.utils.notifications import show_warning

        text = gui_wording(text)
        self.setStyleSheet("color: #e0a030")
        self.setText(text)
        show_warning(text)

    def error(self, text: str) -> None:
        from napari.utils.notifications import show_error

        text = gui_wording(text)
        self.setStyleSheet("color: #e06666")
        self.setText(text)
        show_error(text)
