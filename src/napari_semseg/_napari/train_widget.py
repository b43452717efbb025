"""The Train widget: train a model from strokes painted in a Labels layer, watching it learn.

The annotation layer is never modified: the trainer gets a copy of its data, and strokes
painted while training are handed over (again as a copy) through an ``AnnotationFeed`` and used
from the next epoch. Training runs :func:`napari_semseg.core.train.iter_train` in a napari thread
worker; the loss and validation IoU are plotted live, and every few seconds the best model so far
segments the field of view into a preview layer so the user sees where to paint more.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._backend import load_backend

load_backend()  # torch + smp on the main thread, triton guarded (see _backend)

from ..core import train as trainer  # noqa: E402
from ..core.errors import SemSegError  # noqa: E402
from ..core.models import ARCHITECTURES, save_model  # noqa: E402
from ..core.predict import iter_segment  # noqa: E402
from ..core.settings import PredictSettings, TrainSettings  # noqa: E402
from ._fields import DeviceField, LayerCombo, ModelField, StatusLine  # noqa: E402
from ._form import SettingsForm  # noqa: E402
from ._jobs import Job, Outcome  # noqa: E402
from ._layers import (  # noqa: E402
    KEY,
    base_data,
    class_colormap,
    class_features,
    default_colors,
    layer_classes,
    layer_source,
    owned_layers,
    put_layer,
    spatial_kwargs,
)
from ._plot import LivePlot  # noqa: E402
from ._preview import field_of_view, preview_channel_axis, read_region  # noqa: E402
from ._registry import trained_models  # noqa: E402

ENCODERS = ("mobilenet_v2", "resnet18", "resnet34", "resnet50", "efficientnet-b0",
            "timm-regnety_002", "mit_b0", "densenet121", "vgg11")
# The widget starts from a small, fast network (that of the bundled sample models): on a CPU it
# fits many more steps into a short budget, which matters more than capacity for a few strokes.
GUI_DEFAULTS = {"encoder": "mobilenet_v2", "encoder_depth": 4, "decoder_channels": "64,32,16,16",
                "time_budget": 120.0, "steps_per_epoch": 20}
FEED_DELAY_MS = 1000  # strokes are handed to the trainer at most once a second
PREVIEW_SECONDS = 4.0  # minimum time between two previews


class TrainWidget(QWidget):
    """Train / Stop / Continue a model on painted strokes; live plot and preview; Save model.

    Parameters
    ----------
    napari_viewer
        The viewer (injected by napari).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        from napari.layers import Image, Labels

        self.viewer = napari_viewer
        self.job: Job | None = None
        self.preview_job: Job | None = None
        self.model: Any = None  # the last trained model
        self.model_name: str | None = None
        self.feed: Any = None
        self._feed_layer: Any = None
        self._plan_info: dict[str, Any] = {}
        self._step_offset = 0
        self._last_step = 0
        self._last_preview = 0.0
        self._pending_preview: Any = None
        self._started = 0.0
        self._pbar: Any = None
        self.events_seen = 0

        self.image = LayerCombo(napari_viewer, Image)
        self.image.setObjectName("image")
        self.annotations = LayerCombo(napari_viewer, Labels)
        self.annotations.setObjectName("annotations")
        self.annotations.setToolTip("a Labels layer with strokes: 0 = not annotated, 1..K classes")
        self.new_button = QPushButton("New")
        self.new_button.setObjectName("new_annotations")
        self.new_button.setToolTip("create an empty annotation layer matching the image, with "
                                   "the class names below")
        self.class_names = QLineEdit("background, foreground")
        self.class_names.setObjectName("class_names")
        self.class_names.setToolTip("class names for a new annotation layer, comma separated "
                                    "(label 1 is the first name)")
        self.base_model = ModelField(napari_viewer, allow_new=True, follow_trained=False)
        self.arch = QComboBox()
        self.arch.setObjectName("arch")
        self.arch.addItems(sorted(ARCHITECTURES))
        self.arch.setCurrentText(TrainSettings().arch)
        self.encoder = QComboBox()
        self.encoder.setObjectName("encoder")
        self.encoder.setEditable(True)
        self.encoder.addItems(ENCODERS)
        self.encoder.setCurrentText(GUI_DEFAULTS["encoder"])
        self.device = DeviceField()
        self.form = SettingsForm(TrainSettings, ["time_budget", "epochs"],
                                 labels={"time_budget": "time budget (s)"})
        self.form.set(time_budget=GUI_DEFAULTS["time_budget"])
        self.advanced = SettingsForm(TrainSettings, ["encoder_depth", "decoder_channels",
                                                     "steps_per_epoch", "batch_size",
                                                     "patch_size", "learning_rate", "augment"])
        self.advanced.set(steps_per_epoch=GUI_DEFAULTS["steps_per_epoch"],
                          encoder_depth=GUI_DEFAULTS["encoder_depth"],
                          decoder_channels=GUI_DEFAULTS["decoder_channels"])
        self.live_preview = QCheckBox("live preview of the field of view")
        self.live_preview.setObjectName("live_preview")
        self.live_preview.setChecked(True)

        self.train_button = QPushButton("Train")
        self.train_button.setObjectName("train")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("stop")
        self.continue_button = QPushButton("Continue")
        self.continue_button.setObjectName("continue")
        self.continue_button.setToolTip("train the last model further (with the current strokes)")
        self.save_button = QPushButton("Save model…")
        self.save_button.setObjectName("save")
        self.plot = LivePlot()
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = StatusLine()

        ann_row = QHBoxLayout()
        ann_row.addWidget(self.annotations, 1)
        ann_row.addWidget(self.new_button)
        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("annotations", ann_row)
        form.addRow("class names", self.class_names)
        form.addRow("start from", self.base_model)
        form.addRow("architecture", self.arch)
        form.addRow("encoder", self.encoder)
        form.addRow("device", self.device)
        adv = QGroupBox("advanced")
        adv.setCheckable(True)
        adv.setChecked(False)
        adv_layout = QVBoxLayout(adv)
        adv_layout.addWidget(self.advanced)
        adv.toggled.connect(self.advanced.setVisible)
        self.advanced.setVisible(False)
        buttons = QHBoxLayout()
        for b in (self.train_button, self.stop_button, self.continue_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.form)
        layout.addWidget(adv)
        layout.addWidget(self.live_preview)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.plot)
        layout.addWidget(self.save_button)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self._feed_timer = QTimer(self)
        self._feed_timer.setSingleShot(True)
        self._feed_timer.setInterval(FEED_DELAY_MS)
        self._feed_timer.timeout.connect(self._send_strokes)

        self.new_button.clicked.connect(self.new_annotation_layer)
        self.train_button.clicked.connect(self.train)
        self.stop_button.clicked.connect(self.stop)
        self.continue_button.clicked.connect(self.continue_training)
        self.save_button.clicked.connect(self._save_dialog)
        self.base_model.changed.connect(self._base_changed)
        self.annotations.currentIndexChanged.connect(self._annotations_changed)
        self._base_changed()
        self._annotations_changed()
        self._set_running(False)

    # fields ----------------------------------------------------------------------------------
    def _base_changed(self) -> None:
        new = self.base_model.is_new()
        self.arch.setEnabled(new)
        self.encoder.setEnabled(new)

    def _annotations_changed(self, *_: Any) -> None:
        """Show the class names of the chosen annotation layer, when it has some."""
        layer = self.annotations.layer()
        if layer is not None:
            names = layer_classes(layer)[0]
            if names:
                self.class_names.setText(", ".join(names))

    def _names(self) -> list[str]:
        return [n.strip() for n in self.class_names.text().split(",") if n.strip()]

    def new_annotation_layer(self) -> Any:
        """Add an empty Labels layer matching the selected image, classes named as typed."""
        from napari.layers import Labels

        layer = self.image.layer()
        if layer is None:
            self.status.error("no image layer: open an image first, then create the "
                              "annotation layer for it")
            return None
        names = self._names()
        if len(names) < 2:
            self.status.error("type at least two class names, comma separated (e.g. "
                              "'background, cell')")
            return None
        try:
            source = layer_source(layer)
        except SemSegError as exc:
            self.status.error(str(exc))
            return None
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
        self.status.info(f"paint classes 1..{len(names)} ({', '.join(names)}) in "
                         f"'{ann.name}', then Train")
        return ann

    # training --------------------------------------------------------------------------------
    def _plan(self, continue_from: Any = None) -> dict[str, Any]:
        """Check the user's choices before anything starts; SemSegError says what to fix."""
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
        meta = None
        if continue_from is not None:
            meta = continue_from.metadata
        elif not self.base_model.is_new():
            meta = self.base_model.metadata()
        source = layer_source(image, meta.in_channels if meta is not None else None)
        ann_data = base_data(ann)
        if tuple(ann_data.shape) != tuple(source.output_shape):
            raise SemSegError(f"annotation layer '{ann.name}' has shape {tuple(ann_data.shape)} "
                              f"but image '{image.name}' needs {tuple(source.output_shape)}; "
                              "create the annotation layer with New for this image")
        self.device.check()
        values = {**self.form.values(), **self.advanced.values()}
        settings = TrainSettings(arch=self.arch.currentText(),
                                 encoder=self.encoder.currentText().strip(),
                                 device=self.device.device, **values).validated()
        annotations = np.array(ann_data, copy=True)  # never hand the live layer to the trainer
        top = int(annotations.max()) if annotations.size else 0
        named = layer_classes(ann)[0]
        n = max(top, len(named), meta.classes if meta is not None else 0)
        names, colors = layer_classes(ann, n)
        if meta is not None:  # keep the model's own names/colours for its classes
            names[:meta.classes] = meta.class_names[:n]
            colors[:meta.classes] = meta.class_colors[:n]
        loader = (lambda: continue_from) if continue_from is not None else \
            self.base_model.loader()
        return {"image": image, "annotations_layer": ann, "source": source,
                "annotations": annotations, "settings": settings, "class_names": names,
                "class_colors": colors, "loader": loader}

    def train(self) -> Job | None:
        """Start training (from scratch or from the chosen model)."""
        return self._start(None)

    def continue_training(self) -> Job | None:
        """Train the last trained model further, with the strokes as they are now."""
        if self.model is None:
            self.status.error("nothing to continue: train a model first")
            return None
        return self._start(self.model)

    def _start(self, continue_from: Any) -> Job | None:
        if self.job is not None and self.job.running:
            self.status.error("training is already running; Stop it first")
            return None
        try:
            plan = self._plan(continue_from)
        except SemSegError as exc:
            self.status.error(str(exc))
            return None
        self._plan_info = plan
        self.feed = trainer.AnnotationFeed()
        self._watch(plan["annotations_layer"])
        if continue_from is None:
            self.plot.clear()
            self._step_offset = 0
        else:
            self._step_offset = self._last_step

        def job(should_stop):
            base = plan["loader"]()  # a copy is trained: models in the viewer stay as they are
            return (yield from trainer.iter_train(
                plan["source"], plan["annotations"], plan["settings"], model=base,
                class_names=plan["class_names"], class_colors=plan["class_colors"],
                feed=self.feed, should_stop=should_stop))

        self._set_running(True)
        self._started = time.perf_counter()
        self._last_preview = 0.0
        self.events_seen = 0
        budget = plan["settings"].time_budget
        self.status.info("starting…" + (f" (budget {budget:.0f} s)" if budget else ""))
        from napari.utils import progress

        self._pbar = progress(total=0, desc="napari-semseg: train")  # in the activity dock
        self.job = Job(job, self._on_event, self._on_done).start()
        return self.job

    def stop(self) -> None:
        """Stop training; the best model so far is kept."""
        if self.job is not None and self.job.running:
            self.job.stop()
            self.status.info("stopping after this step…")

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.continue_button.setEnabled(not running and self.model is not None)
        self.save_button.setEnabled(not running and self.model is not None)
        for w in (self.image, self.annotations, self.new_button, self.base_model, self.arch,
                  self.encoder, self.device, self.form, self.advanced):
            w.setEnabled(not running)
        if not running:
            self._base_changed()

    def _on_event(self, event: Any) -> None:
        self.events_seen += 1
        step = self._step_offset + int(event.step)
        self._last_step = step
        if not event.epoch_end:  # the epoch summary repeats the running loss
            self.plot.add_loss(step, event.loss)
        total = event.total_steps
        budget = self._plan_info.get("settings").time_budget if self._plan_info else None
        if total:
            self.progress.setRange(0, int(total))
            self.progress.setValue(int(event.step))
        elif budget:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(min(1.0, event.elapsed / budget) * 1000))
        miou = event.metrics.get("mean_iou") if event.metrics else None
        if event.epoch_end and miou is not None:
            self.plot.add_iou(step, miou)
        parts = [f"epoch {event.epoch}", f"step {event.step}"]
        if event.loss is not None:
            parts.append(f"loss {event.loss:.3f}")
        if miou is not None:
            parts.append(f"val mIoU {miou:.3f}")
        if event.eta is not None:
            parts.append(f"ETA {event.eta:.0f} s")
        self.status.info(" · ".join(parts))
        if self._pbar is not None:
            if total and self._pbar.total != total:
                self._pbar.total = int(total)
            if total:
                self._pbar.update(max(0, int(event.step) - self._pbar.n))
            self._pbar.set_description(f"napari-semseg: train · {parts[0]}")
        if event.epoch_end and event.model is not None:
            self._pending_preview = event.model
            self._maybe_preview()

    def _on_done(self, outcome: Outcome) -> None:
        self._feed_timer.stop()
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self._unwatch()
        seconds = time.perf_counter() - self._started
        if outcome.ok and outcome.result is not None:
            self.model = outcome.result
            meta = self.model.metadata
            self.model_name = f"{meta.arch}/{meta.encoder} {time.strftime('%H:%M:%S')}"
            trained_models(self.viewer).add(self.model_name, self.model)
            best = (meta.training or {}).get("best") if isinstance(meta.training, dict) else None
            note = f", best val mIoU {best:.3f}" if isinstance(best, (int, float)) else ""
            self.status.info(f"trained in {seconds:.0f} s{note}: '{self.model_name}' is "
                             "ready in the Segment widget; Save model… to keep it")
            self.progress.setValue(self.progress.maximum())
            self._pending_preview = self.model
            self._last_preview = 0.0
            self._maybe_preview(force=True)
        elif outcome.cancelled:
            self.status.info("stopped before a model was ready")
            self.progress.setValue(0)
        else:
            self.status.error(outcome.error or "training failed")
            self.progress.setValue(0)
        self._set_running(False)

    # strokes painted during training -----------------------------------------------------------
    def _watch(self, layer: Any) -> None:
        self._unwatch()
        self._feed_layer = layer
        layer.events.paint.connect(self._strokes_changed)
        layer.events.data.connect(self._strokes_changed)

    def _unwatch(self) -> None:
        if self._feed_layer is not None:
            self._feed_layer.events.paint.disconnect(self._strokes_changed)
            self._feed_layer.events.data.disconnect(self._strokes_changed)
            self._feed_layer = None

    def _strokes_changed(self, *_: Any) -> None:
        if not self._feed_timer.isActive():
            self._feed_timer.start()

    def _send_strokes(self) -> None:
        if self.feed is not None and self._feed_layer is not None and self.job is not None \
                and self.job.running:
            self.feed.update(np.array(base_data(self._feed_layer), copy=True))
            self.status.info("new strokes will be used from the next epoch")

    # live preview ------------------------------------------------------------------------------
    def _maybe_preview(self, force: bool = False) -> None:
        if not (self.live_preview.isChecked() or force) or self._pending_preview is None:
            return
        if self.preview_job is not None and self.preview_job.running:
            return
        if not force and time.perf_counter() - self._last_preview < PREVIEW_SECONDS:
            return
        plan = self._plan_info
        image = plan.get("image")
        if image is None or image not in self.viewer.layers:
            return
        model, self._pending_preview = self._pending_preview, None
        source = plan["source"]
        plane, rows, cols = field_of_view(image, self.viewer, source.plane_axes,
                                          source.y_axis, source.x_axis)
        channel = preview_channel_axis(image, source.channel_axis, source.plane_axes)
        device = plan["settings"].device
        axes = (source.plane_axes, plane, rows, cols, source.y_axis, source.x_axis)

        def job(should_stop):
            region = read_region(image, *axes)
            settings = PredictSettings(device=device, channel_axis=channel)
            result = yield from iter_segment(region, model, settings, should_stop=should_stop)
            return result.labels

        self._last_preview = time.perf_counter()
        self.preview_job = Job(job, lambda _e: None,
                               lambda out: self._show_preview(out, model, plane, rows, cols))
        self.preview_job.start()

    def _show_preview(self, outcome: Outcome, model: Any, plane: tuple[int, ...], rows: slice,
                      cols: slice) -> None:
        from napari.layers import Labels

        image = self._plan_info.get("image")
        if not outcome.ok or image is None or image not in self.viewer.layers:
            return
        labels = outcome.result
        source = self._plan_info["source"]
        spatial = spatial_kwargs(image, None if getattr(image, "rgb", False)
                                 else source.channel_axis)
        n_plane = len(plane)
        offsets = list(plane) + [rows.start, cols.start]
        spatial["translate"] = [t + o * s for t, o, s in
                                zip(spatial["translate"], offsets, spatial["scale"])]
        data = labels.reshape((1,) * n_plane + labels.shape[-2:])
        meta = model.metadata
        marker = {"complete": True, "region": [rows.start, rows.stop, cols.start, cols.stop],
                  "class_colors": list(meta.class_colors)}
        existing = owned_layers(self.viewer, "preview", image.unique_id)
        if existing and existing[0].data.shape == data.shape and \
                existing[0].metadata[KEY].get("class_colors") == marker["class_colors"]:
            layer = existing[0]  # update in place: replacing a layer costs the viewer ~0.2 s
            layer.metadata[KEY].update(marker)
            layer.translate = spatial["translate"]
            layer.data = data
            return self._next_preview()
        active = self.viewer.layers.selection.active
        layer = Labels(data, name=f"{image.name} preview", opacity=0.5,
                       colormap=class_colormap(meta.class_colors),
                       features=class_features(meta.class_names), metadata={KEY: marker},
                       **spatial)
        put_layer(self.viewer, layer, "preview", image.unique_id)
        if active is not None and active in self.viewer.layers:  # keep painting where one was
            self.viewer.layers.selection.active = active
        self._next_preview()

    def _next_preview(self) -> None:
        if self._pending_preview is not None:
            QTimer.singleShot(int(PREVIEW_SECONDS * 1000), self._maybe_preview)

    # saving ------------------------------------------------------------------------------------
    def save_model_to(self, path: str) -> bool:
        """Save the last trained model (safetensors + metadata); False with a message on error."""
        if self.model is None:
            self.status.error("no trained model to save: train one first")
            return False
        try:
            saved = save_model(self.model, path)
        except (SemSegError, OSError) as exc:
            self.status.error(f"cannot save the model: {exc}")
            return False
        self.status.info(f"model saved to {saved}")
        return True

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the trained model", "model.safetensors",
                                              "napari-semseg models (*.safetensors)")
        if path:
            if not path.endswith(".safetensors"):
                path += ".safetensors"
            self.save_model_to(path)

    # lifetime ----------------------------------------------------------------------------------
    def wait(self, timeout: float = 120.0) -> None:
        """Block (processing Qt events) until training and preview have ended."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while any(j is not None and j.running for j in (self.job, self.preview_job)):
            if time.monotonic() > end:
                raise TimeoutError("training did not finish in time")
            QApplication.processEvents()
            time.sleep(0.005)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        for job in (self.job, self.preview_job):
            if job is not None and job.running:
                job.stop()
        self._unwatch()
        self.image.disconnect_viewer()
        self.annotations.disconnect_viewer()
        super().closeEvent(event)
