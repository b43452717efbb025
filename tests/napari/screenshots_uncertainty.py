"""README screenshot of the Train widget's uncertainty layer and "Next region to paint" jump.

    xvfb-run -a -s "-screen 0 1600x1000x24" python tests/napari/screenshots_uncertainty.py

A real viewer (viewer first, plugin second) with the EM training sample and its bundled model:
left, the whole slice with the margin uncertainty layer shown (it is hidden by default); right,
the view after "Next region to paint", with the note naming the confused classes. Writes
docs/images/next_region.png. Not a test: pytest does not collect this file.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[2] / "docs" / "images"
SIZE = (1400, 850)


def _pump(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def main() -> int:
    import napari
    from PIL import Image

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(*SIZE)
    _pump(0.5)
    image, strokes = viewer.open_sample("napari-semseg", "em_training")
    _, w = viewer.window.add_plugin_dock_widget("napari-semseg", "Train")
    from napari_semseg import load_model
    from napari_semseg.sample_data import sample_path

    w.inputs.image.select(image)
    w.inputs.annotations.select(strokes)
    w.runner.model = load_model(sample_path("em_model.safetensors"))
    viewer.reset_view()
    panel = w.next_region
    from napari_semseg._napari._uncertainty import viewer_camera

    camera = viewer_camera(viewer)
    panel.button.click()
    while panel.running:
        _pump(0.05)
    layer = [ly for ly in viewer.layers if ly.name.endswith("uncertainty (margin)")][0]
    layer.visible = True
    jump = (tuple(camera.center), camera.zoom)
    viewer.reset_view()
    _pump(0.3)
    left = viewer.screenshot(canvas_only=True, flash=False)
    camera.center, camera.zoom = jump
    _pump(0.3)
    right = viewer.screenshot(canvas_only=False, flash=False)
    print(panel.note.text(), panel.region)
    h = max(left.shape[0], right.shape[0])
    pad = [np.pad(a[..., :3], ((0, h - a.shape[0]), (0, 8), (0, 0))) for a in (left, right)]
    OUT.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(pad, axis=1)).save(OUT / "next_region.png", optimize=True)
    viewer.close()
    print("written", OUT / "next_region.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
