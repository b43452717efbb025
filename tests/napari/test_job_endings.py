"""Jobs end once and cleanly, as users meet it: Cancel, a finished run, closing the dock, and
closing the whole viewer while a job runs (which used to abort Python: "wrapped C/C++ object of
type QTimer has been deleted" in the done handler, then "Fatal Python error: Aborted").

Closing the viewer is tested in a fresh interpreter (viewer first, plugin second), since an
abort would take the test process down; the exit code must be 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.gui

CLOSE_SCRIPT = r"""
import json, sys, time
import napari
from qtpy.QtWidgets import QApplication

def pump_until(cond, timeout):
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)
    return cond()

WHAT = sys.argv[1]
viewer = napari.Viewer(show=True)
out = {}
if WHAT == "segment":
    viewer.open_sample("napari-semseg", "em")
    _, w = viewer.window.add_plugin_dock_widget("napari-semseg", "Segment")
    w.form.set(tile=128, overlap=16)
    job = w.run()
    assert job is not None, w.status.text()
    assert pump_until(lambda: w.results is not None and w.results.chunks_received > 0, 240)
    layers = list(w.results.layers.values())
else:  # train, closed while the live preview of the field of view runs
    image, strokes = viewer.open_sample("napari-semseg", "em_training")
    _, w = viewer.window.add_plugin_dock_widget("napari-semseg", "Train")
    w.inputs.image.select(image)
    w.inputs.annotations.select(strokes)
    w.inputs.form.set(time_budget=300.0)
    w.inputs.advanced.set(steps_per_epoch=2)  # a first epoch (and preview) soon, even on a busy CPU
    job = w.train()
    assert job is not None, w.status.text()
    pump_until(lambda: w.preview.running or not job.running, 300)
    out["preview_running_at_close"] = w.preview.running
    preview_job = w.preview.job
    layers = []
out["job_running_at_close"] = job.running
viewer.close()
out["job_running_after_close"] = job.running
out["outcome"] = "ok" if job.outcome.ok else ("cancelled" if job.outcome.cancelled else "error")
out["names"] = [ly.name for ly in layers]
out["complete"] = [ly.metadata["napari_semseg"]["complete"] for ly in layers]
if WHAT == "train":
    out["preview_running_after_close"] = preview_job is not None and preview_job.running
    out["model_kept"] = w.runner.model is not None
for _ in range(100):  # queued signals of the ended jobs are delivered now: they must be no-ops
    QApplication.processEvents()
    time.sleep(0.01)
print("RESULT " + json.dumps(out), flush=True)
"""


def _close_viewer_mid_job(tmp_path, what: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    env.setdefault("OMP_NUM_THREADS", "1")
    assert env.get("DISPLAY"), "needs a display (pytest-xvfb provides one)"
    proc = subprocess.run([sys.executable, "-c", CLOSE_SCRIPT, what], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert "Fatal Python error" not in proc.stderr, proc.stderr[-3000:]
    assert "has been deleted" not in proc.stderr, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout
    return json.loads(line[-1][len("RESULT "):])


def test_closing_the_viewer_while_segment_runs_exits_cleanly(tmp_path):
    out = _close_viewer_mid_job(tmp_path, "segment")
    assert out["job_running_at_close"] is True  # the viewer closed mid-segmentation
    assert out["job_running_after_close"] is False
    assert out["outcome"] == "cancelled"
    # the half-filled result is marked as such, not left looking complete
    assert out["names"] and all(n.endswith("(incomplete)") for n in out["names"]), out
    assert not any(out["complete"]), out


def test_closing_the_viewer_while_training_and_previewing_exits_cleanly(tmp_path):
    out = _close_viewer_mid_job(tmp_path, "train")
    assert out["job_running_at_close"] is True  # the viewer closed mid-training
    assert out["job_running_after_close"] is False
    assert out["preview_running_after_close"] is False
    assert out["outcome"] in ("ok", "cancelled"), out  # stopping training keeps the best model


def _segment_job(viewer, h, tiny_model_file, tile=64):
    w = h.dock(viewer, "Segment")
    rng = np.random.default_rng(0)
    viewer.add_image(rng.random((256, 256), dtype=np.float32), name="cells")
    w.image.select(viewer.layers["cells"])
    w.model.set_file(tiny_model_file)
    w.form.set(tile=tile, overlap=8, batch_size=1)
    return w


def test_finished_segmentation_says_how_long_it_took(viewer, h, tiny_model_file):
    w = _segment_job(viewer, h, tiny_model_file)
    job = w.run()
    assert job is not None, w.status.text()
    w.wait(120)
    assert job.outcome.ok
    assert w.status.text().startswith("done in "), w.status.text()
    assert "tiles" not in w.status.text()
    assert w.progress.value() == w.progress.maximum()


def test_cancel_says_how_far_it_got(viewer, h, tiny_model_file):
    w = _segment_job(viewer, h, tiny_model_file, tile=32)
    job = w.run()
    h.wait_until(lambda: w.results.chunks_received > 0 or not job.running, 120)
    w.cancel()
    w.wait(120)
    if job.outcome.ok:  # finished before the cancel arrived: nothing to check
        pytest.skip("the run finished before Cancel")
    text = w.status.text()
    assert text.startswith("cancelled after "), text
    done, total = text.split("cancelled after ")[1].split(" tiles")[0].split("/")
    assert 0 < int(done) < int(total)
    assert "(incomplete)" in text
    assert w.progress.value() == 0


def test_events_after_the_end_are_ignored(viewer, h, tiny_model_file):
    w = _segment_job(viewer, h, tiny_model_file)
    job = w.run()
    w.wait(120)
    final = w.status.text()
    assert job.done
    # a progress event or a second outcome delivered late (queued behind the end) changes nothing
    from napari_semseg._napari._jobs import Outcome
    from napari_semseg.core.progress import PredictProgress

    job._event(PredictProgress(3, 16, message="1.0 tiles/s"))
    job._finished()
    job._returned(Outcome(cancelled=True))
    assert w.status.text() == final
    assert job.outcome.ok
    assert not w.results.layers["labels"].name.endswith("(incomplete)")


def test_closing_the_dock_mid_segmentation_marks_the_result_incomplete(viewer, h,
                                                                        tiny_model_file):
    w = _segment_job(viewer, h, tiny_model_file, tile=32)
    job = w.run()
    h.wait_until(lambda: w.results.chunks_received > 0 or not job.running, 120)
    if not job.running:
        pytest.skip("the run finished before the dock could be closed")
    viewer.window.remove_dock_widget(w)  # what the dock's close button does
    assert not job.running  # stopped and waited for, at once
    layer = viewer.layers["cells labels (incomplete)"]
    assert layer.metadata["napari_semseg"]["complete"] is False
