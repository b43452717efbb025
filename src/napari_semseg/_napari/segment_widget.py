"""The Segment widget: segment an image layer with a model, tile by tile, without freezing.

Every check runs on the main thread before anything starts (cheap: headers and shapes only);
the model is loaded and the image segmented by :func:`napari_semseg.core.predict.iter_segment`
in a napari thread worker. Finished chunks arrive on the main thread and are painted into the
result layers, which appear at once (large images: backed by an OME-Zarr store on disk).
"""

from __future__ import annotations

import math
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QWidget,
)

from ._backend import load_backend

load_backend()  # torch + smp on the main thread, triton guarded (see _backend)

from ..core.errors import SemSegError  # noqa: E402
from ..core.predict import iter_segment  # noqa: E402
from ..core.progress import PredictProgress  # noqa: E402
from ..core.settings import PredictSettings  # noqa: E402
from ..core.writers import partial_path  # noqa: E402
from ._fields import (  # noqa: E402
    DeviceField,
    LayerCombo,
    ModelField,
    StatusLine,
    is_plugin_result,
)
from ._form import SettingsForm  # noqa: E402
from ._jobs import Job, Outcome  # noqa: E402
from ._layers import KEY, geo_tags_of, layer_source, spatial_kwargs  # noqa: E402
from ._layout import FitsLaptop, scrolling_layout  # noqa: E402
from ._lifetime import CloseWatcher  # noqa: E402
from ._outputs import ResultLayers  # noqa: E402
from ._plans import SegmentPlan  # noqa: E402
from ._save_labels import LabelsSaver  # noqa: E402

LAZY_PIXELS = 64 * 2**20  # larger outputs are written to a zarr store and shown lazily
REFRESH_MS = 250  # coalesce layer redraws


def cache_dir() -> Path:
    """Folder for the zarr stores of large results (kept after napari closes)."""
    path = Path(tempfile.gettempdir()) / "napari-semseg"
    path.mkdir(parents=True, exist_ok=True)
    return path


class SegmentWidget(FitsLaptop, QWidget):
    """Segment an image layer; the Labels layer fills tile by tile.

    Parameters
    ----------
    napari_viewer
        The viewer (injected by napari).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        from napari.layers import Image

        self.viewer = napari_viewer
        self.lazy_pixels = LAZY_PIXELS
        self.job: Job | None = None
        self.results: ResultLayers | None = None
        self._pbar: Any = None
        self._started = 0.0
        self._tiles = (0, 0)  # tiles done / total, as last reported by the running job

        self.image = LayerCombo(napari_viewer, Image, follow=True)
        self.image.setObjectName("image")
        self.image.setToolTip("the image layer to segment")
        self.model = ModelField(napari_viewer)
        self.model_info = QLabel()
        self.model_info.setObjectName("model_info")
        self.model_info.setWordWrap(True)
        self.device = DeviceField()
        self.form = SettingsForm(PredictSettings,
                                 ["tile", "overlap", "batch_size", "tta", "probabilities",
                                  "uncertainty"], labels={"tta": "test-time aug."})
        self.run_button = QPushButton("Segment")
        self.run_button.setObjectName("run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancel")
        self.cancel_button.setEnabled(False)
        self.save_button = QPushButton("Save labels…")
        self.save_button.setObjectName("save_labels")
        self.save_button.setToolTip("write the result labels to a TIFF or OME-Zarr file")
        self.save_button.setEnabled(False)
        self.all_button = QPushButton("Segment all open images")
        self.all_button.setObjectName("run_all")
        self.all_button.setToolTip("one image after the other, each with the model chosen")
        self.saver = LabelsSaver(self._saved)
        self._queue: list[Any] = []  # images still to segment (Segment all open images)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = StatusLine()
        self._lay_out()

        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_MS)
        self._refresh_timer.timeout.connect(self._refresh)

        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(self._save_dialog)
        self.all_button.clicked.connect(self.run_all)
        self.model.changed.connect(self._model_changed)
        self.model.loaded.connect(self._model_changed)
        self.image.currentIndexChanged.connect(self._image_changed)
        self._image_changed()
        self._model_changed()
        self.closing = CloseWatcher(self, self.shutdown)

    def _lay_out(self) -> None:
        """Place the fields and buttons made in ``__init__``."""
        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("model", self.model)
        form.addRow("", self.model_info)
        form.addRow("device", self.device)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.save_button)
        layout = scrolling_layout(self)  # fits a laptop screen: the dock scrolls
        layout.addLayout(form)
        layout.addWidget(self.form)
        layout.addLayout(buttons)
        layout.addWidget(self.all_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

    # field reactions -------------------------------------------------------------------------
    def _image_changed(self, *_: Any) -> None:
        """Images from the bundled samples pick their matching model."""
        layer = self.image.layer()
        hint = (layer.metadata.get(KEY, {}) or {}).get("model") if layer is not None else None
        if hint and not self.model.select(("file", str(hint))):
            self.model.set_file(hint)

    def _model_changed(self) -> None:
        self.model_info.setText(self.model.describe())

    # running ---------------------------------------------------------------------------------
    def _plan(self) -> SegmentPlan:
        """Check everything the user chose; raise SemSegError with a one-line fix otherwise."""
        layer = self.image.layer()
        if layer is None:
            raise SemSegError("no image layer: open an image (File > Open) or a sample "
                              "(File > Open Sample > napari-semseg) first")
        meta = self.model.metadata()
        source = layer_source(layer, meta.in_channels)
        self.device.check()
        settings = PredictSettings(device=self.device.device, **self.form.values()).validated()
        channel = None if getattr(layer, "rgb", False) else source.channel_axis
        n_pixels = math.prod(source.output_shape)
        store = None
        if n_pixels > self.lazy_pixels:
            store = cache_dir() / f"{layer.name[:40]}-{uuid.uuid4().hex[:8]}.zarr".replace(" ", "_")
        return SegmentPlan(layer=layer, meta=meta, source=source, settings=settings,
                           spatial=spatial_kwargs(layer, channel), store=store,
                           geo_tags=geo_tags_of(layer), loader=self.model.loader())

    def run(self) -> Job | None:
        """Start segmenting (returns the job, or None after showing why it cannot start)."""
        if self.job is not None and self.job.running:
            self.status.error("a segmentation is already running; cancel it first")
            return None
        try:
            plan = self._plan()
        except SemSegError as exc:
            self.status.error(str(exc))
            return None
        meta, source = plan.meta, plan.source
        extra = {"model": f"{meta.arch}/{meta.encoder}"}
        if plan.geo_tags:
            extra["geo_tags"] = plan.geo_tags
        self.results = ResultLayers(
            self.viewer, plan.layer, source.plane_dims, source.plane_shape, meta,
            plan.spatial, probabilities=plan.settings.probabilities,
            uncertainty=plan.settings.uncertainty_kind is not None, store=plan.store, extra=extra)
        if plan.store is None:
            self.results.create_in_memory()
        loader, settings, store = plan.loader, plan.settings, plan.store
        sink = self.results.sink  # in memory: the engine writes into the layers' arrays

        def job(should_stop):
            yield PredictProgress(0, 0, message="loading the model")
            model = loader()
            return (yield from iter_segment(source, model, settings, output=store, sink=sink,
                                            should_stop=should_stop))

        self._set_running(True)
        self.status.info("loading the model…")
        self._started = time.perf_counter()
        self._tiles = (0, 0)
        self.job = Job(job, self._on_event, self._on_done).start()
        return self.job

    def run_all(self) -> Job | None:
        """Segment every open image (not the plugin's results), one job after the other."""
        images = [ly for ly in self.image.layers() if not is_plugin_result(ly)]
        if not images:
            self.status.error("no image layer: open an image (File > Open) or a sample "
                              "(File > Open Sample > napari-semseg) first")
            return None
        self.image.select(images[0])
        job = self.run()
        self._queue = images[1:] if job is not None else []
        return job

    def _run_next(self, outcome: Outcome) -> None:
        """After a job of Segment all: start the next image (a cancel or an error stops)."""
        if not outcome.ok:
            self._queue = []
        while self._queue:
            layer = self._queue.pop(0)
            if layer in self.viewer.layers:
                self.image.select(layer)
                if self.run() is None:
                    self._queue = []
                return

    def cancel(self) -> None:
        """Stop the running segmentation after the current batch (and the images queued)."""
        self._queue = []
        if self.job is not None and self.job.running:
            self.job.stop()
            self.status.info("cancelling…")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.all_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.save_button.setEnabled(not running and self._result_layer() is not None)
        for w in (self.image, self.model, self.device, self.form):
            w.setEnabled(not running)

    def _live(self) -> bool:
        """True while the current job runs (its end may be handled re-entrantly: napari's
        progress and layer calls process queued Qt events)."""
        return self.results is not None and self.job is not None and self.job.running

    def _on_event(self, event: PredictProgress) -> None:
        if not self._live():
            return
        if event.total:  # plain Qt setters first: they never process events
            self._tiles = (event.done, event.total)
            self.progress.setRange(0, event.total)
            self.progress.setValue(event.done)
            self.status.info(f"{event.done}/{event.total} tiles · {event.message}")
        elif event.message:
            self.status.info(event.message)
        self._show_activity(event)
        results = self.results
        if self._live() and results.store is not None and not results.layers and event.total:
            import zarr

            results.create_from_store(zarr.open_group(str(partial_path(results.store)),
                                                      mode="r"))
        if not self._live():  # the job ended meanwhile: its last events are stale
            return
        results.received(event.chunks)
        if results.dirty and not self._refresh_timer.isActive():
            self._refresh_timer.start()

    def _show_activity(self, event: PredictProgress) -> None:
        """The job's entry in napari's activity dock."""
        if not event.total:
            return
        if self._pbar is None:
            from napari.utils import progress

            self._pbar = progress(total=event.total, desc="napari-semseg: segment")
        self._pbar.update(event.done - self._pbar.n)

    def _refresh(self) -> None:
        if self.results is not None:
            self.results.refresh()

    def _on_done(self, outcome: Outcome) -> None:
        self._refresh_timer.stop()
        results = self.results
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        seconds = time.perf_counter() - self._started
        if outcome.ok and results is not None:
            results.complete(outcome.result)
            self.progress.setValue(self.progress.maximum())
            where = f" → {results.store}" if results.store else ""
            self.status.info(f"done in {seconds:.1f} s{where}")
        else:
            if results is not None:
                results.abandon()
            self.progress.setValue(0)
            if outcome.cancelled:
                self.status.info(self._cancelled_text(results))
            else:
                self.status.error(outcome.error or "segmentation failed")
        self._set_running(False)
        if self._queue:
            QTimer.singleShot(0, lambda: self._run_next(outcome))

    # saving ------------------------------------------------------------------------------------
    def _result_layer(self) -> Any:
        layer = self.results.layers.get("labels") if self.results is not None else None
        return layer if layer is not None and layer in self.viewer.layers else None

    def save_labels_to(self, path: str, overwrite: bool = False) -> Job | None:
        """Write the result labels to ``path`` (.tif or .ome.zarr) in a worker; None after
        showing why not (nothing segmented, file exists, bad name)."""
        layer = self._result_layer()
        if layer is None:
            self.status.error("nothing to save: segment an image first")
            return None
        try:
            job = self.saver.save(layer, path, overwrite=overwrite)
        except SemSegError as exc:
            self.status.error(str(exc))
            return None
        self.status.info(f"saving '{layer.name}'…")
        return job

    def _save_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        layer = self._result_layer()
        name = f"{layer.name}.tif" if layer is not None else "labels.tif"
        path, _ = QFileDialog.getSaveFileName(self, "Save the result labels", name,
                                              "TIFF (*.tif *.tiff);;OME-Zarr (*.ome.zarr)")
        if path:  # the dialog asked before replacing an existing file
            self.save_labels_to(path, overwrite=True)

    def _saved(self, text: str, ok: bool) -> None:
        if ok:
            self.status.info(text)
        else:
            self.status.error(text)

    def _cancelled_text(self, results: ResultLayers | None) -> str:
        done, total = self._tiles
        text = f"cancelled after {done}/{total} tiles" if total else "cancelled"
        if results is not None and results.layers:
            text += "; the unfinished result is marked (incomplete)"
        return text

    # lifetime --------------------------------------------------------------------------------
    def wait(self, timeout: float = 60.0) -> None:
        """Block (processing Qt events) until the running job ended; for scripts and tests."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self.job is not None and self.job.running:
            if time.monotonic() > end:
                raise TimeoutError("segmentation did not finish in time")
            QApplication.processEvents()
            time.sleep(0.005)

    def shutdown(self) -> None:
        """The viewer or the dock is closing: stop the job, wait for it, mark an unfinished
        result "(incomplete)", and stop following the viewer's layers."""
        self._queue = []
        if self.job is not None:
            self.job.shutdown()
        self.saver.shutdown()
        self.image.disconnect_viewer()
