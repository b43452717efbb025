"""The Segment widget, driven as a user would: viewer first, widget from the manifest second."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _labels_layers(viewer):
    from napari.layers import Labels

    return [ly for ly in viewer.layers if isinstance(ly, Labels)]


def _owned(viewer, role="labels"):
    return [ly for ly in viewer.layers
            if (ly.metadata.get("napari_semseg") or {}).get("role") == role]


def test_widgets_open_from_the_manifest(viewer, h):
    seg = h.dock(viewer, "Segment")
    train = h.dock(viewer, "Train")
    assert type(seg).__name__ == "SegmentWidget"
    assert type(train).__name__ == "TrainWidget"
    # the device field says what will be used
    assert seg.device.label.text().startswith("→ cpu") or "cuda" in seg.device.label.text()


def test_segment_em_sample_fills_labels_with_model_classes(viewer, h, notifications):
    import tifffile

    viewer.open_sample("napari-semseg", "em")
    image = viewer.layers[0]
    w = h.dock(viewer, "Segment")
    model_path = h.sample("em_model.safetensors")
    assert w.model.choice() == ("file", str(model_path))  # picked from the sample's metadata
    # the model loads in the background as soon as it is chosen (a user clicks seconds later)
    h.wait_until(lambda: w.model.ready() and "loading" not in w.model_info.text())
    with h.Heartbeat() as hb:
        job = hb.click(w.run)
        assert job is not None, w.status.text()
        layer = _owned(viewer)[0]  # the Labels layer appears at once, before any result
        assert layer.metadata["napari_semseg"]["complete"] is False
        assert not w.run_button.isEnabled() and w.cancel_button.isEnabled()
        w.wait()
    assert job.outcome.ok, w.status.text()
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled()
    layer = _owned(viewer)[0]
    assert layer.metadata["napari_semseg"]["complete"] is True
    truth = tifffile.imread(h.sample("em_labels.tif"))
    accuracy = float((np.asarray(layer.data) == truth).mean())
    assert accuracy > 0.8, accuracy
    # exactly what the API computes: the widget drives the same generator
    from napari_semseg import segment

    expected = segment(tifffile.imread(h.sample("em.tif")), str(model_path)).labels
    assert np.array_equal(np.asarray(layer.data), np.asarray(expected))
    # class names and colours come from the model
    from napari_semseg import read_metadata

    meta = read_metadata(model_path)
    for k, color in enumerate(meta.class_colors, start=1):
        rgba = layer.colormap.map(np.array([k]))[0]
        assert np.allclose(rgba[:3], [int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)],
                           atol=0.01)
    assert list(layer.features["class"])[1:] == meta.class_names
    assert layer.scale.tolist() == image.scale.tolist()
    assert not notifications.errors()
    # the labels are drawn on the canvas: a good share of it is coloured
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert h.coloured_fraction(shot) > 0.2, h.coloured_fraction(shot)
    h.check_responsive("segment EM sample (512x512)", hb.summary())


def test_segment_is_responsive_on_the_aerial_sample(viewer, h):
    """Segmenting the 1024x1024 RGB aerial tile keeps the event loop ticking."""
    import tifffile

    viewer.open_sample("napari-semseg", "aerial")
    w = h.dock(viewer, "Segment")
    assert w.model.choice()[1].endswith("aerial_model.safetensors")
    h.wait_until(w.model.ready)
    with h.Heartbeat() as hb:
        assert hb.click(w.run) is not None, w.status.text()
        w.wait(timeout=120)
    assert w.job.outcome.ok, w.status.text()
    labels = np.asarray(_owned(viewer)[0].data)
    truth = tifffile.imread(h.sample("aerial_labels.tif"))
    annotated = truth > 0
    assert labels.shape == truth.shape
    accuracy = float((labels[annotated] == truth[annotated]).mean())
    assert accuracy > 0.5, accuracy
    h.check_responsive("segment aerial sample (1024x1024 RGB)", hb.summary())


def test_cancel_leaves_a_marked_incomplete_layer_and_reenables_buttons(viewer, h,
                                                                      tiny_model_file):
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (1024, 1024), dtype=np.uint8), name="big")
    w = h.dock(viewer, "Segment")
    w.model.set_file(tiny_model_file)
    w.form.set(tile=256, overlap=32)
    job = w.run()
    assert job is not None, w.status.text()
    h.wait_until(lambda: w.results is not None and w.results.chunks_received > 0 or not job.running)
    w.cancel()
    w.wait()
    assert job.outcome.cancelled
    layer = _owned(viewer)[0]
    assert layer.name.endswith("(incomplete)")
    assert layer.metadata["napari_semseg"]["complete"] is False
    data = np.asarray(layer.data)
    assert (data > 0).any() and (data == 0).any()  # some chunks, not all
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled()
    assert w.image.isEnabled()
    # a new run replaces the incomplete layer and completes
    w.form.set(tile=512, overlap=64)
    assert w.run() is not None
    w.wait()
    owned = _owned(viewer)
    assert len(owned) == 1 and owned[0].metadata["napari_semseg"]["complete"] is True
    assert not owned[0].name.endswith("(incomplete)")
    assert (np.asarray(owned[0].data) > 0).all()


def test_large_images_are_backed_by_zarr_and_shown_lazily(viewer, h, tiny_model_file,
                                                          tmp_path, monkeypatch):
    import zarr

    from napari_semseg import segment
    from napari_semseg._napari import segment_widget

    monkeypatch.setattr(segment_widget, "cache_dir", lambda: tmp_path)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (700, 900), dtype=np.uint8)
    viewer.add_image(image, name="large")
    w = h.dock(viewer, "Segment")
    w.lazy_pixels = 1000  # treat this image as "large"
    w.model.set_file(tiny_model_file)
    w.form.set(tile=256, overlap=32, uncertainty=True)
    job = w.run()
    assert job is not None, w.status.text()
    h.wait_until(lambda: bool(_owned(viewer)) or not job.running)
    layer = _owned(viewer)[0]
    assert isinstance(layer.data, zarr.Array)  # the partial store on disk, read lazily
    assert ".partial" in str(layer.data.store)
    w.wait()
    assert job.outcome.ok, w.status.text()
    layer = _owned(viewer)[0]
    store = layer.metadata["napari_semseg"]["store"]
    assert store.endswith(".zarr") and not store.endswith(".partial")
    assert layer.multiscale and len(layer.data) > 1  # the finished pyramid
    expected = segment(image, str(tiny_model_file), tile=256, overlap=32).labels
    assert np.array_equal(np.asarray(layer.data[0]), expected)
    assert _owned(viewer, "uncertainty")[0].data.shape == image.shape


def test_spatial_metadata_stacks_and_optional_outputs(viewer, h, tiny_model_file):
    rng = np.random.default_rng(2)
    stack = rng.integers(0, 255, (3, 96, 128), dtype=np.uint8)
    viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.5), translate=(4.0, 10.0, 20.0),
                     axis_labels=("z", "y", "x"))
    w = h.dock(viewer, "Segment")
    w.model.set_file(tiny_model_file)
    w.form.set(probabilities=True, uncertainty=True)
    assert w.run() is not None, w.status.text()
    w.wait()
    labels = _owned(viewer)[0]
    assert labels.data.shape == stack.shape
    assert (np.asarray(labels.data) > 0).all()  # every plane filled
    assert labels.scale.tolist() == [2.0, 0.5, 0.5]
    assert labels.translate.tolist() == [4.0, 10.0, 20.0]
    assert tuple(labels.axis_labels) == ("z", "y", "x")
    probs = _owned(viewer, "probabilities")[0]
    assert probs.data.shape == (3, 2, 96, 128)  # (z, class, y, x)
    sums = np.asarray(probs.data, np.int32).sum(axis=1)
    assert np.abs(sums - 255).max() <= 2  # probabilities of the two classes add up
    assert _owned(viewer, "uncertainty")[0].data.shape == stack.shape
    # the class slider is named by class: the layer says which class it shows (labels count
    # from 1, the slider from 0)
    names = probs.metadata["napari_semseg"]["class_names"]
    axis = viewer.dims.ndim - probs.ndim + 1
    for index in (0, 1, 0):
        viewer.dims.set_current_step(axis, index)
        assert probs.name == f"stack probabilities: {names[index]} (class {index + 1})"


def test_rerun_replaces_only_plugin_layers(viewer, h, tiny_model_file):
    rng = np.random.default_rng(3)
    viewer.add_image(rng.integers(0, 255, (128, 128), dtype=np.uint8), name="img")
    user = viewer.add_labels(np.full((128, 128), 7, np.uint8), name="img labels")
    w = h.dock(viewer, "Segment")
    w.model.set_file(tiny_model_file)
    for _ in range(2):
        assert w.run() is not None, w.status.text()
        w.wait()
    assert user in viewer.layers and (np.asarray(user.data) == 7).all()
    assert len(_owned(viewer)) == 1
    assert len(_labels_layers(viewer)) == 2
