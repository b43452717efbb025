"""The Synthesize widget: turn a Labels layer into an image with a generator, tile by tile.

Pick a Labels layer (painted, or a segmentation result) and a generator (a bundled sample, one
trained here, or a file), click *Synthesize*: a new image layer appears at once and fills chunk
by chunk while :func:`napari_semseg.core.generation.synthesize.iter_synthesize` runs in a
thread worker. *Another variant* does the same with the next seed. The *Train generator*
section trains a generator from an image layer and its Labels layer
(:func:`~napari_semseg.core.generation.train.iter_train_generator`). All work is in core; this
module only wires fields to jobs and chunks to layers (on the main thread).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._backend import load_backend

load_backend()

from ..core.errors import SemSegError  # noqa: E402
from ..core.generation.labels import check_label_values, open_label_map  # noqa: E402
from ..core.generation.model_file import (  # noqa: E402
    GeneratorMetadata,
    load_generator,
    read_generator_metadata,
    save_generator,
)
from ..core.generation.settings import GeneratorSettings, SynthesizeSettings  # noqa: E402
from ..core.generation.synthesize import SynthesisProgress, iter_synthesize  # noqa: E402
from ..core.generation.train import iter_train_generator  # noqa: E402
from ._fields import DeviceField, LayerCombo, StatusLine  # noqa: E402
from ._form import SettingsForm  # noqa: E402
from ._jobs import Job, Outcome  # noqa: E402
from ._layers import KEY, base_data, layer_source, spatial_kwargs  # noqa: E402

LAZY_PIXELS = 64 * 2**20  # larger images are backed by a zarr array on disk
REFRESH_MS = 250
SAMPLE_GENERATORS = (("EM sample generator", "em_generator.safetensors"),
                     ("aerial sample generator", "aerial_generator.safetensors"))


def bundled_generators() -> dict[str, Path]:
    """The sample generators shipped with the package (``name -> path``), those present."""
    from napari_semseg.sample_data import sample_path

    out = {}
    for name, file in SAMPLE_GENERATORS:
        try:
            out[name] = sample_path(file)
        except FileNotFoundError:
            continue
    return out


class GeneratorField(QWidget):
    """Choose a generator: bundled, trained in this widget, or a file (header read at once)."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.combo = QComboBox()
        self.combo.setObjectName("generator")
        self.browse = QPushButton("File…")
        self.browse.setToolTip("open a generator file (.safetensors) written by napari-semseg")
        self.browse.clicked.connect(self._browse)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo, 1)
        layout.addWidget(self.browse)
        self.trained: dict[str, Any] = {}
        self._files: list[Path] = []
        self._items: list[tuple[str, Any]] = []
        self.combo.currentIndexChanged.connect(lambda *_: self.changed.emit())
        self.refresh()

    def refresh(self) -> None:
        current = self.choice()
        items = [(f"{name} (trained here)", ("trained", name)) for name in reversed(self.trained)]
        items += [(name, ("file", str(path))) for name, path in bundled_generators().items()]
        items += [(p.name, ("file", str(p))) for p in self._files
                  if ("file", str(p)) not in [d for _, d in items]]
        self._items = [d for _, d in items]
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItems([text for text, _ in items])
        self.combo.setCurrentIndex(self._items.index(current) if current in self._items else 0)
        self.combo.blockSignals(False)
        if self.choice() != current:
            self.changed.emit()

    def choice(self) -> tuple[str, Any] | None:
        i = self.combo.currentIndex()
        return self._items[i] if 0 <= i < len(self._items) else None

    def select(self, choice: tuple[str, Any]) -> bool:
        if choice in self._items:
            self.combo.setCurrentIndex(self._items.index(choice))
            return True
        return False

    def set_file(self, path: str | Path) -> None:
        path = Path(path)
        if path not in self._files:
            self._files.append(path)
        self.refresh()
        self.select(("file", str(path)))

    def add_trained(self, name: str, generator: Any) -> None:
        self.trained[name] = generator
        self.refresh()
        self.select(("trained", name))

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a generator", "",
                                              "napari-semseg generators (*.safetensors)")
        if path:
            self.set_file(path)

    def metadata(self) -> GeneratorMetadata:
        """The chosen generator's metadata (file header only); SemSegError if none or bad."""
        choice = self.choice()
        if choice is None:
            raise SemSegError("no generator chosen: open a generator file (File…) or train one "
                              "below")
        kind, ref = choice
        return self.trained[ref].metadata if kind == "trained" else read_generator_metadata(ref)

    def loader(self) -> Any:
        """A callable returning the generator (call it in the worker)."""
        kind, ref = self.choice() or (None, None)
        if kind == "trained":
            generator = self.trained[ref]
            return lambda: generator
        return lambda: load_generator(ref)

    def describe(self) -> str:
        try:
            meta = self.metadata()
        except SemSegError as exc:
            return str(exc)
        channels = {1: "greyscale", 3: "RGB"}.get(meta.channels, f"{meta.channels} channels")
        return f"{channels} {meta.dtype} images of {meta.classes} classes: " + \
            ", ".join(meta.class_names)


class TrainSection(QGroupBox):
    """Train a generator from an image layer and its Labels layer."""

    def __init__(self, widget: SynthesizeWidget) -> None:
        super().__init__("Train generator")
        from napari.layers import Image, Labels

        self.widget = widget
        self.image = LayerCombo(widget.viewer, Image)
        self.image.setObjectName("train_image")
        self.labels = LayerCombo(widget.viewer, Labels)
        self.labels.setObjectName("train_labels")
        self.form = SettingsForm(GeneratorSettings, ["time_budget", "crop_size", "batch_size"])
        self.form.set(time_budget=300.0)
        self.train_button = QPushButton("Train")
        self.train_button.setObjectName("train")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("stop")
        self.stop_button.setEnabled(False)
        self.save_button = QPushButton("Save generator…")
        self.save_button.setObjectName("save")
        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("labels", self.labels)
        buttons = QHBoxLayout()
        for b in (self.train_button, self.stop_button, self.save_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.form)
        layout.addLayout(buttons)
        self.train_button.clicked.connect(self.train)
        self.stop_button.clicked.connect(self.stop)
        self.save_button.clicked.connect(self.save)
        self.job: Job | None = None
        self._stop = threading.Event()

    def _inputs(self) -> tuple[Any, Any, GeneratorSettings]:
        image, labels = self.image.layer(), self.labels.layer()
        if image is None or labels is None:
            raise SemSegError("training needs an image layer and a Labels layer of the same "
                              "scene (0 = not annotated, 1..K = classes)")
        source = layer_source(image)
        self.widget.device.check()
        settings = GeneratorSettings(device=self.widget.device.device,
                                     **self.form.values()).validated()
        if settings.time_budget is None:
            settings.steps = 1000
        names = (labels.metadata.get(KEY) or {}).get("class_names")
        return source, (base_data(labels), names), settings

    def train(self) -> Job | None:
        """Start training (returns the job, or None after showing why it cannot start)."""
        w = self.widget
        stop = threading.Event()
        try:
            source, (labels, names), settings = self._inputs()
            job_gen = iter_train_generator(source, np.array(labels, copy=True), settings,
                                           class_names=names, should_stop=stop.is_set)
        except SemSegError as exc:
            w.status.error(str(exc))
            return None
        self._stop = stop
        self.job = Job(lambda _should_stop: job_gen, self._on_event, self._on_done).start()
        self._running(True)
        return self.job

    def _running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.stop_button.setEnabled(running)

    def stop(self) -> None:
        """End the training after the current epoch; the generator so far is kept."""
        if self.job is not None and self.job.running:
            self._stop.set()
            self.widget.status.info("stopping after this epoch…")

    def _on_event(self, event: Any) -> None:
        if event.message:
            self.widget.status.info(event.message)
        elif event.step:
            left = f", {event.eta:.0f} s left" if event.eta is not None else ""
            self.widget.status.info(f"training: step {event.step}, generator loss "
                                    f"{event.loss:.3f}{left}")

    def _on_done(self, outcome: Outcome) -> None:
        self._running(False)
        if outcome.ok:
            name = f"generator {len(self.widget.generator.trained) + 1}"
            self.widget.generator.add_trained(name, outcome.result)
            steps = outcome.result.metadata.training.get("steps")
            self.widget.status.info(f"{name} trained ({steps} steps); pick a Labels layer and "
                                    "click Synthesize")
        elif outcome.cancelled:
            self.widget.status.info("training stopped")
        else:
            self.widget.status.error(outcome.error or "training failed")

    def save(self) -> None:
        choice = self.widget.generator.choice()
        if choice is None or choice[0] != "trained":
            self.widget.status.error("no generator trained here to save; train one first")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save the generator", "generator.safetensors",
                                              "napari-semseg generators (*.safetensors)")
        if path:
            save_generator(self.widget.generator.trained[choice[1]], path)
            self.widget.status.info(f"saved {path}")


class SynthesizeWidget(QWidget):
    """Make an image from a Labels layer; the image layer fills chunk by chunk.

    Parameters
    ----------
    napari_viewer
        The viewer (injected by napari).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        from napari.layers import Labels

        self.viewer = napari_viewer
        self.lazy_pixels = LAZY_PIXELS
        self.job: Job | None = None
        self.layer: Any = None
        self._started = 0.0
        self.labels = LayerCombo(napari_viewer, Labels)
        self.labels.setObjectName("labels")
        self.labels.setToolTip("the label map: 0 = unconstrained, 1..K = the generator's classes")
        self.generator = GeneratorField()
        self.info = QLabel()
        self.info.setObjectName("generator_info")
        self.info.setWordWrap(True)
        self.seed = QSpinBox()
        self.seed.setObjectName("seed")
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip(SynthesizeSettings.__dataclass_fields__["seed"].metadata["help"])
        self.device = DeviceField()
        self.run_button = QPushButton("Synthesize")
        self.run_button.setObjectName("run")
        self.variant_button = QPushButton("Another variant")
        self.variant_button.setObjectName("variant")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.status = StatusLine()
        self.training = TrainSection(self)
        self._layout()
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self._refresh)
        self.run_button.clicked.connect(self.run)
        self.variant_button.clicked.connect(self.another_variant)
        self.cancel_button.clicked.connect(self.cancel)
        self.generator.changed.connect(lambda: self.info.setText(self.generator.describe()))
        self.labels.currentIndexChanged.connect(self._labels_changed)
        self._labels_changed()
        self.info.setText(self.generator.describe())

    def _labels_changed(self, *_: Any) -> None:
        """Offer the bundled generator that fits the chosen Labels layer: the one with its
        class names (a segmentation result), else the one of a sample image in the viewer."""
        layer = self.labels.layer()
        if layer is None:
            return
        names = (layer.metadata.get(KEY) or {}).get("class_names")
        samples = [str((ly.metadata.get(KEY) or {}).get("model", ""))
                   for ly in self.viewer.layers if ly is not layer]
        for path in bundled_generators().values():
            try:
                fits = read_generator_metadata(path).class_names == names
            except SemSegError:
                continue
            stem = path.name.replace("_generator.safetensors", "_model.safetensors")
            if fits or (names is None and any(s.endswith(stem) for s in samples)):
                self.generator.select(("file", str(path)))
                return

    def _layout(self) -> None:
        form = QFormLayout()
        form.addRow("labels", self.labels)
        form.addRow("generator", self.generator)
        form.addRow("", self.info)
        form.addRow("seed", self.seed)
        form.addRow("device", self.device)
        buttons = QHBoxLayout()
        for b in (self.run_button, self.variant_button, self.cancel_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.training)
        layout.addStretch(1)

    # running ---------------------------------------------------------------------------------
    def _plan(self) -> dict[str, Any]:
        """Check what the user chose; raise SemSegError with a one-line fix otherwise."""
        layer = self.labels.layer()
        if layer is None:
            raise SemSegError("no Labels layer: paint one (New labels layer) or segment an "
                              "image first")
        meta = self.generator.metadata()
        self.device.check()
        settings = SynthesizeSettings(seed=self.seed.value(), device=self.device.device)
        data = base_data(layer)
        n_pixels = math.prod(data.shape)
        if isinstance(data, np.ndarray):  # a painted layer: a snapshot, checked at once
            data = np.array(data, copy=True)
            check_label_values(open_label_map(data), meta.classes, meta.class_names)
        return {"layer": layer, "meta": meta, "data": data, "settings": settings,
                "large": n_pixels > self.lazy_pixels, "loader": self.generator.loader()}

    def _make_layer(self, plan: dict[str, Any]) -> Any:
        meta, data = plan["meta"], plan["data"]
        shape = tuple(data.shape) + ((meta.channels,) if meta.channels > 1 else ())
        if plan["large"]:
            import tempfile

            import zarr

            folder = Path(tempfile.gettempdir()) / "napari-semseg"
            folder.mkdir(parents=True, exist_ok=True)
            chunks = (1,) * (data.ndim - 2) + (512, 512) + shape[data.ndim:]
            array = zarr.open(str(folder / f"synth-{uuid.uuid4().hex[:8]}.zarr"), mode="w",
                              shape=shape, chunks=chunks, dtype=meta.dtype)
        else:
            array = np.zeros(shape, meta.dtype)
        seed = plan["settings"].seed
        name = f"{plan['layer'].name} · synthesized (seed {seed})"
        rgb = meta.channels == 3
        limits = [min(meta.intensity_low), max(meta.intensity_high)]
        layer = self.viewer.add_image(
            array, name=name, rgb=rgb, contrast_limits=None if rgb else limits,
            metadata={KEY: {"role": "synthesized", "seed": seed, "complete": False,
                            "class_names": meta.class_names}},
            **spatial_kwargs(plan["layer"]))
        layer.metadata[KEY]["plane_dims"] = tuple(data.shape[:-2])
        return layer

    def run(self) -> Job | None:
        """Start synthesizing (returns the job, or None after showing why it cannot start)."""
        if self.job is not None and self.job.running:
            self.status.error("a synthesis is already running; cancel it first")
            return None
        try:
            plan = self._plan()
        except SemSegError as exc:
            self.status.error(str(exc))
            return None
        self.layer = self._make_layer(plan)
        data, settings, loader = plan["data"], plan["settings"], plan["loader"]

        def job(should_stop):
            yield SynthesisProgress(0, 0, message="loading the generator")
            return (yield from iter_synthesize(data, loader(), settings, keep=False,
                                               should_stop=should_stop))

        self._set_running(True)
        self._started = time.perf_counter()
        self.job = Job(job, self._on_event, self._on_done).start()
        return self.job

    def another_variant(self) -> Job | None:
        """Synthesize again with the next seed (a new layer, the earlier one stays)."""
        self.seed.setValue(self.seed.value() + 1)
        return self.run()

    def cancel(self) -> None:
        if self.job is not None and self.job.running:
            self.job.stop()
            self.status.info("cancelling…")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.variant_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_event(self, event: SynthesisProgress) -> None:
        layer = self.layer
        if event.total:
            self.progress.setRange(0, event.total)
            self.progress.setValue(event.done)
            self.status.info(f"{event.done}/{event.total} tiles · {event.message}")
        elif event.message:
            self.status.info(event.message)
        if layer is None or not event.chunks:
            return
        dims = layer.metadata[KEY]["plane_dims"]
        for chunk in event.chunks:
            plane = tuple(int(i) for i in np.unravel_index(chunk.plane, dims)) if dims else ()
            layer.data[plane + chunk.region] = chunk.image
        if not self._timer.isActive():
            self._timer.start()

    def _refresh(self) -> None:
        if self.layer is not None:
            self.layer.refresh()

    def _on_done(self, outcome: Outcome) -> None:
        self._timer.stop()
        self._set_running(False)
        layer = self.layer
        seconds = time.perf_counter() - self._started
        if outcome.ok:
            layer.metadata[KEY]["complete"] = True
            layer.refresh()
            self.progress.setValue(self.progress.maximum())
            self.status.info(f"done in {seconds:.1f} s (seed {layer.metadata[KEY]['seed']})")
            return
        self.progress.setValue(0)
        if outcome.cancelled:
            layer.name = layer.name + " (incomplete)"
            self.status.info("cancelled; the unfinished image is marked (incomplete)")
        else:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            self.layer = None
            self.status.error(outcome.error or "synthesis failed")

    # lifetime --------------------------------------------------------------------------------
    def wait(self, timeout: float = 120.0) -> None:
        """Block (processing Qt events) until the running jobs ended; for scripts and tests."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        jobs = (lambda: self.job, lambda: self.training.job)
        while any(j() is not None and j().running for j in jobs):
            if time.monotonic() > end:
                raise TimeoutError("the job did not finish in time")
            QApplication.processEvents()
            time.sleep(0.005)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        for job in (self.job, self.training.job):
            if job is not None and job.running:
                job.stop()
        for combo in (self.labels, self.training.image, self.training.labels):
            combo.disconnect_viewer()
        super().closeEvent(event)
