"""The Train widget: train a model from strokes painted in a Labels layer, watching it learn.

The annotation layer is never modified: the trainer gets a copy of its data, and strokes
painted while training are handed over (again as a copy) by a
:class:`~napari_semseg._napari._strokes.StrokeFeed` and used from the next epoch. Training runs
:func:`napari_semseg.core.train.iter_train` in a napari thread worker
(:class:`~napari_semseg._napari._train_run.TrainingRun`); the loss and validation IoU are plotted
live, and every few seconds the best model so far segments the field of view into a preview
layer (:class:`~napari_semseg._napari._preview.LivePreview`) so the user sees where to paint more.
The fields and their check live in :class:`~napari_semseg._napari._train_form.TrainForm`.
"""

from __future__ import annotations

import time
from typing import Any

from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

from ._backend import load_backend

load_backend()  # torch + smp on the main thread, triton guarded (see _backend)

from ..core.errors import SemSegError  # noqa: E402
from ..core.models import save_model  # noqa: E402
from ._fields import StatusLine  # noqa: E402
from ._jobs import Job  # noqa: E402
from ._layout import FitsLaptop, foldable, scrolling_layout  # noqa: E402
from ._lifetime import CloseWatcher  # noqa: E402
from ._preview import LivePreview  # noqa: E402
from ._strokes import StrokeFeed  # noqa: E402
from ._train_form import TrainForm  # noqa: E402
from ._train_progress import TrainProgress  # noqa: E402
from ._train_run import TrainingRun  # noqa: E402
from ._uncertainty import NextRegionPanel  # noqa: E402


def _button(text: str, name: str, tip: str = "") -> QPushButton:
    button = QPushButton(text)
    button.setObjectName(name)
    if tip:
        button.setToolTip(tip)
    return button


class TrainWidget(FitsLaptop, QWidget):
    """Train / Stop / Continue a model on painted strokes; live plot and preview; Save model.

    Parameters
    ----------
    napari_viewer
        The viewer (injected by napari).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.inputs = TrainForm(napari_viewer)
        self.status = StatusLine()
        self.progress = TrainProgress(self.status)
        self.strokes = StrokeFeed(self)
        self.strokes.sent.connect(
            lambda: self.status.info("new strokes will be used from the next epoch"))
        self.preview = LivePreview(napari_viewer, self.inputs.live_preview.isChecked, self)
        self.name_field = QLineEdit()
        self.name_field.setObjectName("model_name")
        self.name_field.setPlaceholderText("name of the trained model (default: arch/encoder "
                                           "and time)")
        self.name_field.setToolTip("how the trained model is listed in the Segment widget")
        self.runner = TrainingRun(napari_viewer, self.progress, self.strokes, self.preview,
                                  finished=lambda: self._set_running(False),
                                  name=self.name_field.text)
        self.train_button = _button("Train", "train")
        self.stop_button = _button("Stop", "stop")
        self.continue_button = _button("Continue", "continue",
                                       "train the last model further (with the current strokes)")
        self.save_button = _button("Save model…", "save")
        self.next_region = NextRegionPanel(napari_viewer, self.inputs, lambda: self.model)
        self.next_region.follow(self.preview)
        self._lay_out()
        self.inputs.new_button.clicked.connect(self.new_annotation_layer)
        self.train_button.clicked.connect(self.train)
        self.stop_button.clicked.connect(self.stop)
        self.continue_button.clicked.connect(self.continue_training)
        self.save_button.clicked.connect(self._save_dialog)
        self._set_running(False)
        self.closing = CloseWatcher(self, self.shutdown)

    def _lay_out(self) -> None:
        buttons = QHBoxLayout()
        for b in (self.train_button, self.stop_button, self.continue_button):
            buttons.addWidget(b)
        layout = scrolling_layout(self)  # fits a laptop screen: the dock scrolls
        layout.addWidget(self.inputs)
        layout.addLayout(buttons)
        layout.addWidget(self.progress.bar)
        layout.addWidget(foldable("plot", self.progress.plot, True, "plot_box"))
        for w in (self.name_field, self.save_button, self.next_region, self.status):
            layout.addWidget(w)
        layout.addStretch(1)

    @property
    def model(self) -> Any:
        """The last trained model (None before the first training)."""
        return self.runner.model

    @property
    def model_name(self) -> str | None:
        """Its name in the Segment widget's model list."""
        return self.runner.model_name

    def new_annotation_layer(self) -> Any:
        """Add an empty Labels layer matching the selected image, classes named as typed."""
        try:
            ann = self.inputs.new_annotation_layer()
        except SemSegError as exc:
            self.status.error(str(exc))
            return None
        names = self.inputs.names()
        self.status.info(f"paint classes 1..{len(names)} ({', '.join(names)}) in "
                         f"'{ann.name}', then Train")
        return ann

    # training --------------------------------------------------------------------------------
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
        if self.runner.running:
            self.status.error("training is already running; Stop it first")
            return None
        try:
            plan = self.inputs.plan(continue_from)
        except SemSegError as exc:
            self.status.error(str(exc))
            return None
        self._set_running(True)
        job = self.runner.start(plan, continued=continue_from is not None)
        if plan.notes:
            self.status.warning("; ".join(plan.notes))
        return job

    def stop(self) -> None:
        """Stop training; the best model so far is kept."""
        if self.runner.stop():
            self.status.info("stopping after this step…")

    def _set_running(self, running: bool) -> None:
        trained = not running and self.model is not None
        self.train_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.continue_button.setEnabled(trained)
        self.save_button.setEnabled(trained)
        self.inputs.set_running(running)

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
        while self.runner.running or self.preview.running:
            if time.monotonic() > end:
                raise TimeoutError("training did not finish in time")
            QApplication.processEvents()
            time.sleep(0.005)

    def shutdown(self) -> None:
        """The viewer or the dock is closing: stop training and preview, wait for both (the
        best model so far is kept), and stop following the viewer's layers."""
        self.preview.close()
        self.next_region.stop()
        self.runner.shutdown()
        self.strokes.stop()
        self.inputs.disconnect_viewer()
