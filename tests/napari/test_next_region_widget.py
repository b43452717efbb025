"""The Train widget's "Next region to paint" button moves the camera to an unpainted uncertain
region, with a note of the confused classes; the uncertainty layer is hidden and sits under
the annotations. Run the way users do: viewer first, plugin second, in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gui

SCRIPT = r"""
import time
import numpy as np
import napari
from qtpy.QtWidgets import QApplication

viewer = napari.Viewer(show=True)
rng = np.random.default_rng(0)
image = (rng.random((320, 400)) * 80).astype(np.uint8)
image[60:200, 80:260] += 120
img = viewer.add_image(image, name="img", scale=(0.5, 0.5), translate=(10, 20))
strokes = np.zeros(image.shape, np.uint8)
strokes[100:110, 100:240] = 2
strokes[250:260, 20:380] = 1
ann = viewer.add_labels(strokes, name="img annotations", scale=(0.5, 0.5), translate=(10, 20))
_, train = viewer.window.add_plugin_dock_widget("napari-semseg", "Train")
train.inputs.image.select(img)
train.inputs.annotations.select(ann)

import torch
from napari_semseg import build_model
from napari_semseg.core.normalize import Normalization

torch.manual_seed(0)
train.runner.model = build_model(
    "unet", "resnet18", in_channels=1, classes=2, encoder_depth=3, decoder_channels=(16, 8, 8),
    class_names=["interior", "membrane"], normalization=Normalization("meanstd", [80.0], [0.02]))
panel = train.next_region
from napari_semseg._napari._uncertainty import viewer_camera

camera = viewer_camera(viewer)


def click():
    panel.button.click()
    end = time.monotonic() + 240
    while panel.running:
        assert time.monotonic() < end, "no answer"
        QApplication.processEvents()
        time.sleep(0.01)
    QApplication.processEvents()


def painted(region):
    y0, x0, y1, x1 = region.box
    return strokes[y0:y1, x0:x1].any()


before = np.array(camera.center[-2:])
click()
first = panel.region
assert first is not None, panel.note.text()
assert not painted(first)
center = np.array(camera.center[-2:])
assert np.allclose(center, panel.world_center()), (center, panel.world_center())
cy, cx = first.center
assert np.allclose(center, (10 + 0.5 * cy, 20 + 0.5 * cx))
assert not np.allclose(center, before)
assert "interior and membrane" in panel.note.text() or \
    "membrane and interior" in panel.note.text(), panel.note.text()
layer = [ly for ly in viewer.layers if ly.name == "img uncertainty (margin)"][0]
assert not layer.visible and layer.blending == "translucent"
assert viewer.layers.index(layer) < viewer.layers.index(ann)
assert layer.data.shape == image.shape and layer.data.dtype == np.uint8
# the strokes were not touched
assert (ann.data == strokes).all()

click()  # the next click goes elsewhere, and is not painted either
second = panel.region
assert not painted(second)
d = np.hypot(second.center[0] - cy, second.center[1] - cx)
assert d >= 2 * (first.box[2] - first.box[0]) - 1, d
assert np.allclose(camera.center[-2:], panel.world_center())
print("OK", first, second)
viewer.close()
"""


def test_next_region_button_moves_the_camera_there(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    env["OMP_NUM_THREADS"] = "1"
    assert env.get("DISPLAY"), "needs a display (pytest-xvfb provides one)"
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert "OK" in proc.stdout
