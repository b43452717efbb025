"""Sample data from the manifest: real images, each naming its bundled model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.mark.parametrize("key, shape, model", [
    ("em", (512, 512), "em_model.safetensors"),
    ("aerial", (1024, 1024, 3), "aerial_model.safetensors"),
])
def test_samples_open_with_their_model(viewer, key, shape, model):
    from napari_semseg import read_metadata

    layers = viewer.open_sample("napari-semseg", key)
    (image,) = layers
    assert image.data.shape == shape
    assert image.rgb == (len(shape) == 3)
    path = Path(image.metadata["napari_semseg"]["model"])
    assert path.name == model and path.is_file()
    meta = read_metadata(path)
    assert meta.in_channels == (3 if len(shape) == 3 else 1)
    assert Path(image.metadata["napari_semseg"]["ground_truth"]).is_file()


def test_training_sample_has_example_strokes(viewer, h):
    import tifffile

    image, strokes = viewer.open_sample("napari-semseg", "em_training")
    truth = tifffile.imread(h.sample("em_train_labels.tif"))
    s = np.asarray(strokes.data)
    assert s.shape == image.data.shape == truth.shape
    painted = s > 0
    assert 0.005 < painted.mean() < 0.05  # a few strokes, not a dense mask
    assert set(np.unique(s[painted])) == {1, 2}
    assert (s[painted] == truth[painted]).all()  # every stroke lies in its class
    assert list(strokes.features["class"])[1:] == ["membrane", "interior"]
    # drawn in the colours of the bundled EM model
    from napari_semseg import read_metadata

    meta = read_metadata(h.sample("em_model.safetensors"))
    for k, color in enumerate(meta.class_colors, start=1):
        rgba = strokes.colormap.map(np.array([k]))[0]
        assert np.allclose(rgba[:3], [int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)],
                           atol=0.01)
