"""The Train widget shows the run's first answer (feature head) as a preview layer."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_first_answer_adds_a_preview_layer_before_the_cnn_steps(viewer, h):
    image, strokes = viewer.open_sample("napari-semseg", "em_training")
    w = h.dock(viewer, "Train")
    w.inputs.image.select(image)
    w.inputs.annotations.select(strokes)
    assert w.inputs.encoder_weights.currentText() == "auto"
    w.inputs.form.set(time_budget=600.0, epochs=None)  # bounded by time: a first answer
    offered = []
    original = w.preview.offer
    w.preview.offer = lambda model, force=False: (offered.append(model), original(model, force))

    def previews():
        return [ly for ly in viewer.layers
                if (ly.metadata.get("napari_semseg") or {}).get("role") == "preview"]

    job = w.train()
    assert job is not None, w.status.text()
    h.wait_until(lambda: previews() or not job.running, timeout=300)
    w.stop()
    w.wait(timeout=300)
    assert offered and offered[0].metadata.arch == "feature-head"
    assert len(previews()) == 1
    h.wait_until(lambda: not w.preview.job.running, timeout=60)
    assert set(np.unique(np.asarray(previews()[0].data))) <= {1, 2}
    assert job.outcome.ok and w.model is not None
