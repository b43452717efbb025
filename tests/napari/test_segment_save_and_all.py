"""Segment: "Save labels…" beside the result, and "Segment all open images" (one job per
image, in sequence). Viewer first, plugin second."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _images(viewer, n):
    rng = np.random.default_rng(0)
    return [viewer.add_image(rng.random((96, 96), dtype=np.float32), name=f"img{i}")
            for i in range(n)]


def _segment_widget(viewer, h, model_file):
    w = h.dock(viewer, "Segment")
    w.model.set_file(model_file)
    w.form.set(tile=64, overlap=8, batch_size=1)
    return w


def test_segment_all_open_images_runs_one_job_per_image(viewer, h, tiny_model_file):
    images = _images(viewer, 2)
    w = _segment_widget(viewer, h, tiny_model_file)
    assert w.run_all() is not None
    h.wait_until(lambda: not w._queue and w.job is not None and not w.job.running, 240)
    w.wait(120)
    results = [ly for ly in viewer.layers if ly.name.endswith(" labels")]
    assert sorted(ly.name for ly in results) == [f"{im.name} labels" for im in images]
    for layer in results:
        assert layer.metadata["napari_semseg"]["complete"] is True
        assert (np.asarray(layer.data) > 0).all()
    assert len([ly for ly in viewer.layers if "labels" in ly.name]) == 2  # no result re-run


def test_save_labels_writes_the_result_and_never_replaces_silently(viewer, h, tmp_path,
                                                                   tiny_model_file):
    _images(viewer, 1)
    w = _segment_widget(viewer, h, tiny_model_file)
    assert not w.save_button.isEnabled()  # nothing to save yet
    job = w.run()
    w.wait(120)
    assert job.outcome.ok and w.save_button.isEnabled()
    path = tmp_path / "result.tif"
    save = w.save_labels_to(str(path))
    assert save is not None, w.status.text()
    h.wait_until(lambda: not save.running, 120)
    assert save.outcome.ok and path.exists(), w.status.text()
    assert "saved to" in w.status.text()
    layers = viewer.open(str(path), plugin="napari-semseg")
    np.testing.assert_array_equal(np.asarray(layers[0].data),
                                  np.asarray(w.results.layers["labels"].data))
    assert layers[0].metadata["napari_semseg"]["class_names"] == ["membrane", "interior"]
    size = path.stat().st_size
    assert w.save_labels_to(str(path)) is None  # exists: refused with one line
    assert "exists" in w.status.text() and path.stat().st_size == size


def test_uncertainty_is_hidden_and_not_added_over_the_labels(viewer, h, tiny_model_file):
    _images(viewer, 1)
    w = _segment_widget(viewer, h, tiny_model_file)
    w.form.set(uncertainty=True)
    job = w.run()
    w.wait(120)
    assert job.outcome.ok, w.status.text()
    unc = w.results.layers["uncertainty"]
    assert not unc.visible and unc.blending != "additive"
    assert w.results.layers["labels"].visible
