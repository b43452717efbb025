"""The Train widget: strokes in, a better model out, the strokes untouched, the viewer alive."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def mean_iou(pred: np.ndarray, truth: np.ndarray, classes: int) -> float:
    ious = []
    for k in range(1, classes + 1):
        inter = np.logical_and(pred == k, truth == k).sum()
        union = np.logical_or(pred == k, truth == k).sum()
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


# a shallow resnet18 Unet with small batches: on a busy 2-core CPU only a few steps fit in the
# test's budget, and this network learns from the first steps
QUICK = {"encoder_depth": 3, "decoder_channels": "64,32,16", "patch_size": 128, "batch_size": 4,
         "steps_per_epoch": 5}


def _open_training_sample(viewer, h):
    image, strokes = viewer.open_sample("napari-semseg", "em_training")
    w = h.dock(viewer, "Train")
    w.inputs.image.select(image)
    w.inputs.annotations.select(strokes)
    w.inputs.encoder.setCurrentText("resnet18")
    w.inputs.advanced.set(**QUICK)
    return w, image, strokes


def test_training_from_strokes_beats_an_untrained_model(viewer, h, monkeypatch):
    import tifffile
    import torch

    from napari_semseg import build_model, segment

    w, image, strokes = _open_training_sample(viewer, h)
    before = np.array(strokes.data, copy=True)
    seg = h.dock(viewer, "Segment")
    w.inputs.form.set(epochs=4, time_budget=90.0)  # 20 steps (deterministic on CPU), capped
    with h.Heartbeat() as hb:
        job = hb.click(w.train)
        assert job is not None, w.status.text()
        assert not w.train_button.isEnabled() and w.stop_button.isEnabled()
        h.wait_until(lambda: w.progress.plot.loss or not job.running, timeout=60)
        # a stroke painted while training goes to the trainer as a copy, from the next epoch
        sent = []
        original = w.strokes.feed.update
        monkeypatch.setattr(w.strokes.feed, "update", lambda a: (sent.append(a), original(a)))
        strokes.paint((300, 300), 2)
        after_paint = np.array(strokes.data, copy=True)
        h.wait_until(lambda: bool(sent) or not job.running, timeout=30)
        w.wait(timeout=120)
    assert job.outcome.ok, w.status.text()
    assert sent and np.array_equal(sent[0], after_paint)
    assert not np.shares_memory(sent[0], strokes.data)
    # the plugin never modified the annotation layer (only the user's own stroke changed it)
    assert np.array_equal(np.asarray(strokes.data), after_paint)
    assert (after_paint != before).sum() == (after_paint[before != after_paint] == 2).sum()
    assert w.train_button.isEnabled() and w.continue_button.isEnabled()
    assert w.save_button.isEnabled()
    assert len(w.progress.plot.loss) > 3
    # live preview: a plugin layer over the field of view
    previews = [ly for ly in viewer.layers
                if (ly.metadata.get("napari_semseg") or {}).get("role") == "preview"]
    h.wait_until(lambda: not w.preview.job.running, timeout=30)
    previews = [ly for ly in viewer.layers
                if (ly.metadata.get("napari_semseg") or {}).get("role") == "preview"]
    assert len(previews) == 1 and (np.asarray(previews[0].data) > 0).all()

    # the trained model is offered by the Segment widget at once
    assert seg.model.choice() == ("trained", w.model_name)
    # better than an untrained model of the same kind on a held-out slice
    held_out = tifffile.imread(h.sample("em.tif"))
    truth = tifffile.imread(h.sample("em_labels.tif"))
    trained = mean_iou(np.asarray(segment(held_out, w.model).labels), truth, 2)
    meta = w.model.metadata
    torch.manual_seed(0)
    untrained_model = build_model(meta.arch, meta.encoder, meta.in_channels, meta.classes,
                                  normalization=meta.normalization, **meta.arch_kwargs)
    untrained = mean_iou(np.asarray(segment(held_out, untrained_model).labels), truth, 2)
    steps = meta.training.get("steps")
    print(f"trained mIoU {trained:.3f} vs untrained {untrained:.3f} after {steps} steps")
    assert trained > untrained + 0.1, (trained, untrained, steps)
    h.check_responsive("train on EM strokes (20 steps, live preview)", hb.summary())


def test_stop_continue_and_save(viewer, h, tmp_path):
    from napari_semseg import load_model

    w, image, strokes = _open_training_sample(viewer, h)
    assert w.inputs.class_names.text() == "membrane, interior"  # the classes of the chosen layer
    before = np.array(strokes.data, copy=True)
    w.inputs.form.set(time_budget=300.0)
    w.inputs.live_preview.setChecked(False)
    job = w.train()
    assert job is not None, w.status.text()
    h.wait_until(lambda: len(w.progress.plot.loss) >= 2 or not job.running, timeout=60)
    w.stop()
    w.wait(timeout=60)
    assert job.outcome.ok and w.model is not None  # the best model so far
    assert w.train_button.isEnabled() and not w.stop_button.isEnabled()
    first = w.model_name
    steps = len(w.progress.plot.loss)
    job = w.continue_training()
    assert job is not None, w.status.text()
    h.wait_until(lambda: len(w.progress.plot.loss) >= steps + 2 or not job.running, timeout=60)
    w.stop()
    w.wait(timeout=60)
    assert job.outcome.ok
    assert len(w.progress.plot.loss) > steps  # the plot continues
    assert w.progress.plot.loss[-1][0] > w.progress.plot.loss[steps - 1][0]
    from napari_semseg._napari._registry import trained_models

    names = trained_models(viewer).names()
    assert first in names and w.model_name in names
    assert np.array_equal(np.asarray(strokes.data), before)
    path = tmp_path / "mine.safetensors"
    assert w.save_model_to(str(path))
    loaded = load_model(path)
    assert loaded.metadata.class_names == ["membrane", "interior"]


def test_new_annotation_layer_matches_the_image(viewer, h):
    image = viewer.add_image(np.zeros((3, 64, 80), np.uint8), name="stack",
                             scale=(2.0, 0.5, 0.5), translate=(1.0, 2.0, 3.0))
    w = h.dock(viewer, "Train")
    w.inputs.image.select(image)
    w.inputs.class_names.setText("cell, nucleus, background")
    ann = w.new_annotation_layer()
    assert ann.data.shape == (3, 64, 80) and not ann.data.any()
    assert ann.scale.tolist() == [2.0, 0.5, 0.5] and ann.translate.tolist() == [1.0, 2.0, 3.0]
    assert list(ann.features["class"])[1:] == ["cell", "nucleus", "background"]
    assert w.inputs.annotations.layer() is ann and ann.mode == "paint"


def test_default_fields_make_valid_training_settings(viewer, h):
    """The widget's defaults (a small, fast network and a 2-minute budget) are valid settings,
    with the same names as TrainSettings; nothing is trained here."""
    image, strokes = viewer.open_sample("napari-semseg", "em_training")
    w = h.dock(viewer, "Train")
    w.inputs.image.select(image)
    w.inputs.annotations.select(strokes)
    plan = w.inputs.plan()
    s = plan.settings
    assert (s.arch, s.encoder, s.encoder_depth, s.decoder_channels) == \
        ("unet", "mobilenet_v2", 4, "64,32,16,16")
    assert s.time_budget == 120.0 and s.epochs is None and s.steps_per_epoch == 20
    assert plan.class_names == ["membrane", "interior"]
    assert not np.shares_memory(plan.annotations, strokes.data)  # a copy goes to training
