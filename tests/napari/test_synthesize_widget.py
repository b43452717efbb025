"""The Synthesize widget, driven as a user would: viewer first, widget from the manifest second."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _label_map(shape=(96, 120), classes=2, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = rng.integers(1, classes + 1, (shape[0] // 8 + 1, shape[1] // 8 + 1))
    return np.kron(grid, np.ones((8, 8), np.uint8))[:shape[0], :shape[1]].astype(np.uint8)


@pytest.fixture
def generator_file(tmp_path):
    """A small random greyscale generator for 2 classes (uint8 images)."""
    import torch

    from napari_semseg import build_generator, save_generator

    torch.manual_seed(0)
    gen = build_generator(2, 1, base=4, depth=3, dtype="uint8", intensity_low=[0.0],
                          intensity_high=[255.0], tile=64, overlap=32,
                          class_names=["membrane", "interior"])
    return save_generator(gen, tmp_path / "gen.safetensors")


def _synthesized(viewer):
    return [ly for ly in viewer.layers
            if (ly.metadata.get("napari_semseg") or {}).get("role") == "synthesized"]


def test_synthesize_fills_a_new_image_layer(viewer, h, generator_file, notifications):
    from napari_semseg import synthesize

    labels = _label_map()
    viewer.add_labels(labels, name="painted", scale=(2.0, 2.0))
    w = h.dock(viewer, "Synthesize")
    assert type(w).__name__ == "SynthesizeWidget"
    w.generator.set_file(generator_file)
    assert "membrane, interior" in w.info.text()
    w.seed.setValue(3)
    with h.Heartbeat() as hb:
        job = hb.click(w.run)
        assert job is not None, w.status.text()
        layer = _synthesized(viewer)[0]  # the image layer appears at once
        assert layer.metadata["napari_semseg"]["complete"] is False
        w.wait()
    h.check_responsive("synthesize (tiny generator)", hb.summary())
    assert job.outcome.ok, w.status.text()
    assert layer.metadata["napari_semseg"]["complete"] is True
    assert tuple(layer.scale) == (2.0, 2.0)
    expected = synthesize(labels, str(generator_file), seed=3, device="auto").image
    assert np.array_equal(np.asarray(layer.data), expected)
    # another variant: the next seed, in a new layer; the first stays
    job = w.another_variant()
    w.wait()
    assert job.outcome.ok and w.seed.value() == 4
    first, second = _synthesized(viewer)
    assert "seed 4" in second.name and not np.array_equal(first.data, second.data)
    assert notifications.errors() == []


def test_bad_choices_get_one_clear_line(viewer, h, generator_file, tiny_model_file,
                                        notifications):
    viewer.add_labels(np.full((40, 40), 5, np.uint8), name="five classes")
    w = h.dock(viewer, "Synthesize")
    w.generator.set_file(tiny_model_file)  # a segmentation model, not a generator
    assert "not a generator" in w.info.text()
    assert w.run() is None
    notifications.assert_one_clear_error("segmentation model, not a generator")
    w.generator.set_file(generator_file)
    assert w.run() is None
    assert "uses class 5 but the generator knows classes 1..2" in w.status.text()
    assert _synthesized(viewer) == []


def test_train_section_adds_a_generator(viewer, h):
    labels = _label_map((64, 64))
    image = np.where(labels == 1, 50, 200).astype(np.uint8)
    viewer.add_image(image, name="image")
    viewer.add_labels(labels, name="truth")
    w = h.dock(viewer, "Synthesize")
    w.device.set("cpu")
    w.training.form.set(time_budget=2.0, crop_size=32, batch_size=2)
    job = w.training.train()
    assert job is not None, w.status.text()
    w.wait(timeout=300)
    assert job.outcome.ok, w.status.text()
    assert w.generator.choice() == ("trained", "generator 1")
    assert w.run() is not None
    w.wait()
    assert np.asarray(_synthesized(viewer)[0].data).shape == (64, 64)


def test_em_sample_picks_the_em_generator(viewer, h):
    import tifffile

    from napari_semseg._napari.synthesize_widget import bundled_generators

    paths = bundled_generators()
    if "EM sample generator" not in paths:
        pytest.skip("the sample generators are not built in this checkout")
    viewer.open_sample("napari-semseg", "em")
    w = h.dock(viewer, "Synthesize")
    viewer.add_labels(tifffile.imread(h.sample("em_labels.tif")), name="membranes")
    assert w.generator.choice() == ("file", str(paths["EM sample generator"]))
    assert "membrane, interior" in w.info.text()
