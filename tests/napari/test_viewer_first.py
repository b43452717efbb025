"""Users open napari first and load the plugin second: do exactly that in a fresh interpreter.

With Mesa software OpenGL (Xvfb), importing triton after the viewer's OpenGL context exists
segfaults unless it is loaded with RTLD_DEEPBIND first (segmentation-models-pytorch pulls it in
through torchvision and torch._dynamo). In the pytest process other test modules may already
have imported torch, so the order is only guaranteed in a new process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gui

SCRIPT = r"""
import sys, importlib.util
import numpy as np
import napari

viewer = napari.Viewer(show=True)  # the OpenGL context exists from here on
heavy = ("torch", "triton", "segmentation_models_pytorch", "torchvision", "timm")
assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]
viewer.open_sample("napari-semseg", "em")
assert "segmentation_models_pytorch" not in sys.modules, "sample data must stay light"
_, seg = viewer.window.add_plugin_dock_widget("napari-semseg", "Segment")
_, train = viewer.window.add_plugin_dock_widget("napari-semseg", "Train")
assert "segmentation_models_pytorch" in sys.modules
job = seg.run()
assert job is not None, seg.status.text()
seg.wait(120)
assert job.outcome.ok, seg.status.text()
labels = viewer.layers[-1]
assert (np.asarray(labels.data) > 0).all()
shot = viewer.screenshot(canvas_only=True, flash=False)
assert shot[..., :3].std() > 5, "blank canvas"
print("OK triton installed:", importlib.util.find_spec("triton") is not None,
      "loaded:", "triton" in sys.modules)
viewer.close()
"""


def test_viewer_first_then_plugin_in_a_fresh_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    assert env.get("DISPLAY"), "needs a display (pytest-xvfb provides one)"
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    # a segfault shows up as returncode -11 with no Python traceback
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert "OK" in proc.stdout
