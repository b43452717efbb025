"""The inputs of the Train widget and their check: :meth:`TrainForm.plan` returns a
:class:`~napari_semseg._napari._plans.TrainPlan` or raises a one-line
:class:`~napari_semseg.core.errors.SemSegError` saying what to fix.

Fields: image and annotation layers (with New, which creates an empty annotation layer for the
image), class names, the model to start from, architecture and encoder of a new model, device,
time budget and epochs, advanced training settings (the :class:`TrainSettings` fields, same names
as API and CLI) and the live-preview switch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import SemSegError
from ..core.settings import TrainSettings, option_fields
from ._classes import ClassPanel
from ._fields import DeviceField, LayerCombo, ModelField, is_plugin_result
from ._form import SettingsForm
from ._layers import (
    KEY,
    base_data,
    class_colormap,
    class_features,
    default_colors,
    layer_classes,
    layer_source,
    spatial_kwargs,
)
from ._layout import foldable
from ._plans import TrainPlan

# The widget starts from a small, fast network (that of the bundled sample models): on a CPU it
# fits many more steps into a short budget, which matters more than capacity for a few strokes.
GUI_DEFAULTS = {"encoder": "mobilenet_v2", "encoder_weights": "auto", "encoder_depth": 4,
                "decoder_channels": "64,32,16,16", "time_budget": 120.0, "steps_per_epoch": 20}
ADVANCED = ["encoder_depth", "decoder_channels", "steps_per_epoch", "batch_size", "patch_size",
            "learning_rate", "augment", "threads", "adversarial", "pseudo_labels"]


def _combo(name: str, items: Any, current: str, editable: bool = False) -> QComboBox:
    combo = QComboBox()
    combo.setObjectName(name)
    combo.setEditable(editable)
    combo.addItems(list(items))
    combo.setCurrentText(current)
    combo.setToolTip(option_fields(TrainSettings)[name].help)
    return combo


class TrainForm(QWidget):
    """The Train widget's fields, laid out as a form; :meth:`plan` checks them."""

    def __init__(self, viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari.layers import Image, Labels

        from ..core.models import ARCHITECTURES

        self.viewer = viewer
        self.image = LayerCombo(viewer, Image, follow=True)
        self.image.setObjectName("image")
        self.annotations = LayerCombo(viewer, Labels, follow=True)
        self.annotations.setObjectName("annotations")
        self.annotations.setToolTip("a Labels layer with strokes: 0 = not annotated, 1..K classes "
                                    "(napari-semseg's own results are listed last)")
        self.new_button = QPushButton("New")
        self.new_button.setObjectName("new_annotations")
        self.new_button.setToolTip("create an empty annotation layer matching the image, with "
                                   "the class names below")
        self.class_names = QLineEdit("background, foreground")
        self.class_names.setObjectName("class_names")
        self.class_names.setToolTip("class names for a new annotation layer, comma separated "
                                    "(label 1 is the first name)")
        self.classes = ClassPanel(viewer)
        self.classes.setObjectName("class_panel")
        self.base_model = ModelField(viewer, allow_new=True, follow_trained=False)
        self.arch = _combo("arch", sorted(ARCHITECTURES), TrainSettings().arch)
        self.encoder = _combo("encoder", option_fields(TrainSettings)["encoder"].option.suggestions,
                              GUI_DEFAULTS["encoder"], editable=True)
        self.encoder_weights = _combo(
            "encoder_weights", option_fields(TrainSettings)["encoder_weights"].option.suggestions,
            GUI_DEFAULTS["encoder_weights"], editable=True)  # editable: a .safetensors path
        self.device = DeviceField(TrainSettings)
        self.form = SettingsForm(TrainSettings, ["time_budget", "epochs"],
                                 labels={"time_budget": "time budget (s)"})
        self.advanced = SettingsForm(TrainSettings, ADVANCED)
        self.form.set(time_budget=GUI_DEFAULTS["time_budget"])
        self.advanced.set(**{k: v for k, v in GUI_DEFAULTS.items() if k in ADVANCED})
        self.live_preview = QCheckBox("live preview of the field of view")
        self.live_preview.setObjectName("live_preview")
        self.live_preview.setChecked(True)
        self._lay_out()
        self.base_model.changed.connect(self._base_changed)
        self.annotations.currentIndexChanged.connect(self._annotations_changed)
        self.classes.renamed.connect(self._annotations_changed)
        self._base_changed()
        self._annotations_changed()

    def _lay_out(self) -> None:
        ann_row = QHBoxLayout()
        ann_row.addWidget(self.annotations, 1)
        ann_row.addWidget(self.new_button)
        rows = QFormLayout()
        for label, field in (("image", self.image), ("annotations", ann_row),
                             ("class names", self.class_names), ("classes", self.classes),
                             ("start from", self.base_model),
                             ("architecture", self.arch), ("encoder", self.encoder),
                             ("encoder start", self.encoder_weights),
                             ("device", self.device)):
            rows.addRow(label, field)
        advanced = foldable("advanced", self.advanced, False, "advanced_box")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(rows)
        layout.addWidget(self.form)
        layout.addWidget(advanced)
        layout.addWidget(self.live_preview)

    # field reactions -------------------------------------------------------------------------
    def _base_changed(self) -> None:
        new = self.base_model.is_new()
        self.arch.setEnabled(new)
        self.encoder.setEnabled(new)
        self.encoder_weights.setEnabled(new)

    def _annotations_changed(self, *_: Any) -> None:
        """Show the class names of the chosen annotation layer, when it has some."""
        layer = self.annotations.layer()
        if layer is not self.classes.layer:
            self.classes.show_layer(layer)
        if layer is not None:
            names = layer_classes(layer)[0]
            if names:
                self.class_names.setText(", ".join(names))

    def set_running(self, running: bool) -> None:
        """Lock the fields a running training depends on (class names and preview stay free)."""
        for w in (self.image, self.annotations, self.new_button, self.base_model, self.arch,
                  self.encoder, self.encoder_weights, self.device, self.form, self.advanced):
            w.setEnabled(not running)
        if not running:
            self._base_changed()

    def names(self) -> list[str]:
        return [n.strip() for n in self.class_names.text().split(",") if n.strip()]

    def new_annotation_layer(self) -> Any:
        """Add an empty Labels layer matching the selected image, classes named as typed
        (SemSegError if there is no image or fewer than two names)."""
        from napari.layers import Labels

        layer = self.image.layer()
        if layer is None:
            raise SemSegError("no image layer: open an image first, then create the "
                              "annotation layer for it")
        names = self.names()
        if len(names) < 2:
            raise SemSegError("type at least two class names, comma separated (e.g. "
                              "'background, cell')")
        source = layer_source(layer)
        colors = default_colors(len(names))
        channel = None if getattr(layer, "rgb", False) else source.channel_axis
        dtype = np.uint8 if len(names) < 256 else np.uint16
        ann = Labels(np.zeros(source.output_shape, dtype), name=f"{layer.name} annotations",
                     colormap=class_colormap(colors), features=class_features(names),
                     metadata={KEY: {"class_names": names, "class_colors": colors}},
                     **spatial_kwargs(layer, channel))
        self.viewer.add_layer(ann)
        ann.mode = "paint"
        ann.selected_label = 1
        self.annotations.select(ann)
        return ann

    # the plan ---------------------------------------------------------------------------------
    def plan(self, continue_from: Any = None) -> TrainPlan:
        """Check the user's choices before anything starts; SemSegError says what to fix.

        ``continue_from`` is a model to train further (Continue), else the chosen base model
        (or a new one) is used.
        """
        image, ann = self._layers()
        meta = self._base_metadata(continue_from)
        source = layer_source(image, meta.in_channels if meta is not None else None)
        ann_data = base_data(ann)
        if tuple(ann_data.shape) != tuple(source.output_shape):
            raise SemSegError(f"annotation layer '{ann.name}' has shape {tuple(ann_data.shape)} "
                              f"but image '{image.name}' needs {tuple(source.output_shape)}; "
                              "create the annotation layer with New for this image")
        settings = self.settings()
        if meta is None:  # a new model: check its encoder start before anything starts
            from ..core.training.starts import check_start_setting

            check_start_setting(settings)
        annotations = np.array(ann_data, copy=True)  # never hand the live layer to the trainer
        names, colors, notes = self._classes(ann, annotations, meta)
        if is_plugin_result(ann):
            notes.insert(0, f"training on '{ann.name}', a result of napari-semseg: every pixel "
                            "it labels counts as a stroke; pick your painted layer under "
                            "annotations unless that is what you want")
        loader = (lambda: continue_from) if continue_from is not None else \
            self.base_model.loader()
        return TrainPlan(image, ann, source, annotations, settings, names, colors, loader,
                         tuple(notes))

    def settings(self) -> TrainSettings:
        """The training settings of the fields (checked: device available, values in range)."""
        self.device.check()
        values = {**self.form.values(), **self.advanced.values()}
        return TrainSettings(arch=self.arch.currentText(),
                             encoder=self.encoder.currentText().strip(),
                             encoder_weights=self.encoder_weights.currentText().strip(),
                             device=self.device.device, **values).validated()

    def _layers(self) -> tuple[Any, Any]:
        image = self.image.layer()
        if image is None:
            raise SemSegError("no image layer: open an image (File > Open) or a sample "
                              "(File > Open Sample > napari-semseg) first")
        ann = self.annotations.layer()
        if ann is None:
            raise SemSegError("no annotation layer: click New (next to annotations) and paint "
                              "a few strokes of each class")
        if ann is image:
            raise SemSegError("the annotation layer must be a Labels layer, not the image")
        return image, ann

    def _base_metadata(self, continue_from: Any) -> Any:
        if continue_from is not None:
            return continue_from.metadata
        return None if self.base_model.is_new() else self.base_model.metadata()

    @staticmethod
    def _classes(ann: Any, annotations: np.ndarray, meta: Any
                 ) -> tuple[list[str], list[str], list[str]]:
        """Class names and colours (the layer's; the model's own for the model's classes) and
        a note when the two disagree: names are never replaced silently."""
        top = int(annotations.max()) if annotations.size else 0
        named = layer_classes(ann)[0]
        n = max(top, len(named), meta.classes if meta is not None else 0)
        names, colors = layer_classes(ann, n)
        notes: list[str] = []
        if meta is not None:  # keep the model's own names/colours for its classes
            k = min(meta.classes, len(named))
            if named[:k] != list(meta.class_names[:k]):
                notes.append(f"class names of '{ann.name}' ({', '.join(named[:k])}) differ from "
                             f"the model's ({', '.join(meta.class_names[:k])}); the model's are "
                             "kept: choose 'new model' under start from to use the layer's")
            names[:meta.classes] = meta.class_names[:n]
            colors[:meta.classes] = meta.class_colors[:n]
        return names, colors, notes

    def disconnect_viewer(self) -> None:
        self.image.disconnect_viewer()
        self.annotations.disconnect_viewer()
