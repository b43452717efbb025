"""Take the README screenshots of both widgets at work, from a real viewer (run under Xvfb).

    xvfb-run -a -s "-screen 0 1600x1000x24" python tests/napari/screenshots.py

Writes docs/images/segment_widget.png (the aerial sample half segmented, labels filling tile by
tile) and docs/images/train_widget.png (training on the EM strokes: live loss/IoU plot and the
live preview of the field of view). Not a test: pytest does not collect this file.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "docs" / "images"
SIZE = (1500, 900)


def _pump(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def _until(cond, timeout: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("screenshot scene did not reach the wanted state")
        QApplication.processEvents()
        time.sleep(0.01)


def _viewer():
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(*SIZE)
    _pump(0.5)
    return viewer


def segment_shot(path: Path, sample: str = "aerial") -> None:
    viewer = _viewer()  # the viewer first, the plugin second, as users do
    viewer.open_sample("napari-semseg", sample)
    _, w = viewer.window.add_plugin_dock_widget("napari-semseg", "Segment")
    _until(w.model.ready, 120)
    tile = 256 if sample == "aerial" else 128
    w.form.set(tile=tile, overlap=32)  # small tiles: the filling is visible
    viewer.reset_view()
    job = w.run()
    assert job is not None, w.status.text()
    _until(lambda: w.progress.maximum() > 1 and w.progress.value() >= 0.45 * w.progress.maximum()
           or not job.running, 300)
    w._refresh()
    _pump(0.3)
    viewer.screenshot(path=str(path), canvas_only=False, flash=False)
    w.wait(300)
    viewer.close()


def train_shot(path: Path) -> None:
    viewer = _viewer()
    image, strokes = viewer.open_sample("napari-semseg", "em_training")
    _, w = viewer.window.add_plugin_dock_widget("napari-semseg", "Train")
    w.inputs.image.select(image)
    w.inputs.annotations.select(strokes)
    w.inputs.form.set(time_budget=300.0)
    viewer.reset_view()
    job = w.train()
    assert job is not None, w.status.text()
    previews = lambda: [ly for ly in viewer.layers  # noqa: E731
                        if (ly.metadata.get("napari_semseg") or {}).get("role") == "preview"]
    _until(lambda: (len(w.progress.plot.iou) >= 3 and previews()) or not job.running, 300)
    viewer.layers.move(viewer.layers.index(strokes), len(viewer.layers))  # strokes on top
    _pump(0.3)
    viewer.screenshot(path=str(path), canvas_only=False, flash=False)
    w.stop()
    w.wait(120)
    viewer.close()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    which = sys.argv[1:] or ["segment", "train"]
    if "segment" in which:
        segment_shot(OUT / "segment_widget.png")
    if "segment-em" in which:  # the EM sample instead of the aerial one
        segment_shot(OUT / "segment_widget.png", "em")
    if "train" in which:
        train_shot(OUT / "train_widget.png")
    print("written to", OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
