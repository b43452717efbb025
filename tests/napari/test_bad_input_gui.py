"""Bad input in the GUI: one clear notification, no traceback, no frozen viewer, no new layer.

One test per case of the issue: no image layer, annotation shape differs from the image, model
channels do not match the image, nothing painted, one class painted, device unavailable, a model
file that is not a model.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _assert_clean(widget, before, viewer, notifications, *fragments):
    """The widget shows the message, buttons are usable again, no layer was added."""
    text = notifications.assert_one_clear_error(*fragments)
    assert widget.status.text() == text
    assert len(viewer.layers) == before
    button = getattr(widget, "run_button", None) or widget.train_button
    assert button.isEnabled()
    return text


def _train_setup(viewer, h, strokes):
    image = np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8)
    viewer.add_image(image, name="img")
    ann = viewer.add_labels(strokes, name="strokes")
    w = h.dock(viewer, "Train")
    w.inputs.image.select(viewer.layers["img"])
    w.inputs.annotations.select(ann)
    w.inputs.form.set(time_budget=5.0)
    return w


def test_segment_without_image_layer(viewer, h, notifications, tiny_model_file):
    w = h.dock(viewer, "Segment")
    w.model.set_file(tiny_model_file)
    assert w.run() is None
    _assert_clean(w, 0, viewer, notifications, "no image layer")


def test_train_without_image_layer(viewer, h, notifications):
    w = h.dock(viewer, "Train")
    assert w.train() is None
    _assert_clean(w, 0, viewer, notifications, "no image layer")


def test_annotation_shape_differs_from_image(viewer, h, notifications):
    w = _train_setup(viewer, h, np.zeros((100, 128), np.uint8))
    assert w.train() is None
    _assert_clean(w, 2, viewer, notifications, "shape", "(100, 128)", "(128, 128)", "New")


def test_model_channels_do_not_match_image(viewer, h, notifications, tiny_model_file):
    rgb = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    viewer.add_image(rgb, name="rgb", rgb=True)
    w = h.dock(viewer, "Segment")
    w.model.set_file(tiny_model_file)  # a 1-channel model
    assert w.run() is None
    text = _assert_clean(w, 1, viewer, notifications, "3 channel", "expects 1")
    assert "channel_axis" not in text and "pass " not in text  # widget words: the field
    assert "under model" in text


def test_nothing_painted(viewer, h, notifications):
    w = _train_setup(viewer, h, np.zeros((128, 128), np.uint8))
    job = w.train()
    if job is not None:  # the trainer's own check runs in the worker; wait for it
        w.wait(60)
        assert not job.outcome.ok
    _assert_clean(w, 2, viewer, notifications, "annotated")


def test_one_class_painted(viewer, h, notifications):
    strokes = np.zeros((128, 128), np.uint8)
    strokes[10:20, 10:60] = 1
    w = _train_setup(viewer, h, strokes)
    job = w.train()
    if job is not None:
        w.wait(60)
        assert not job.outcome.ok
    _assert_clean(w, 2, viewer, notifications, "class")
    assert np.array_equal(viewer.layers["strokes"].data, strokes)


def test_device_unavailable(viewer, h, notifications, tiny_model_file):
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    w = h.dock(viewer, "Segment")
    w.model.set_file(tiny_model_file)
    w.device.set("cuda:99")
    assert "not available" in w.device.label.text()
    assert w.run() is None
    _assert_clean(w, 1, viewer, notifications, "cuda:99", "not available")


def test_model_file_that_is_not_a_model(viewer, h, notifications, tmp_path):
    fake = tmp_path / "weights.safetensors"
    fake.write_bytes(b"\x80\x04\x95 definitely a pickle, not a model" * 10)
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    w = h.dock(viewer, "Segment")
    w.model.set_file(fake)
    assert "not a napari-semseg model" in w.model_info.text()
    assert w.run() is None
    _assert_clean(w, 1, viewer, notifications, "not a napari-semseg model")
