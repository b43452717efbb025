"""Seam-free tiling: tiled output agrees with a whole-image pass (issue 2, item 5).

A randomly initialised network is meaningless here, so the default test trains a small model
(encoder depth 3, stride 8) for a few seconds on synthetic images whose labels need spatial
context (noisy smooth fields); the slow test uses the bundled EM model when it is present.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_semseg import build_model, segment
from napari_semseg.core.normalize import Normalization


def synthetic(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image of a smooth random field; class 2 where the field is positive."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), 5)
    field /= field.std()
    image = field + rng.normal(scale=1.2, size=shape)
    labels = (field > 0).astype(np.int64)
    return ((image + 4) * 30).clip(0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def trained_model():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_model("unet", "resnet18", 1, 2, encoder_depth=3, decoder_channels=(32, 16, 8),
                        tile=128, halo=8,
                        normalization=Normalization("meanstd", [120.0], [1 / 40.0]))
    image, labels = synthetic(rng, (512, 512))
    x = model.metadata.normalization.apply(image[None].astype(np.float32))[0]
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(60):
        ys, xs = rng.integers(0, 512 - 64, 8), rng.integers(0, 512 - 64, 8)
        corners = list(zip(ys, xs, strict=True))
        xb = torch.from_numpy(np.stack([x[y:y + 64, c:c + 64] for y, c in corners])[:, None])
        yb = torch.from_numpy(np.stack([labels[y:y + 64, c:c + 64] for y, c in corners]))
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test_image, test_labels = synthetic(np.random.default_rng(1), (420, 390))
    res = segment(test_image, model, device="cpu", tile=512)
    accuracy = (res.labels == test_labels + 1).mean()
    assert accuracy > 0.85, f"the test model did not learn ({accuracy:.3f})"
    return model


@pytest.mark.parametrize("shape", [(301, 263), (420, 390)])
@pytest.mark.parametrize("tile,overlap", [(None, None), (128, 48), (128, 64), (192, 64)])
def test_tiled_agrees_with_whole_image(trained_model, shape, tile, overlap):
    image, _ = synthetic(np.random.default_rng(2), shape)
    whole = segment(image, trained_model, device="cpu", tile=512, probabilities=True)
    tiled = segment(image, trained_model, device="cpu", tile=tile, overlap=overlap,
                    probabilities=True)
    agreement = (tiled.labels == whole.labels).mean()
    diff = np.abs(tiled.probabilities.astype(int) - whole.probabilities.astype(int))
    assert agreement >= 0.999, f"label agreement {agreement:.5f}"
    assert diff.mean() < 0.2 and np.percentile(diff, 99.9) <= 8, (diff.mean(), diff.max())


def test_too_little_overlap_shows_seams(trained_model):
    """The check above can fail: without overlap, tiles disagree at their borders."""
    image, _ = synthetic(np.random.default_rng(2), (420, 390))
    whole = segment(image, trained_model, device="cpu", tile=512, probabilities=True)
    tiled = segment(image, trained_model, device="cpu", tile=64, overlap=0, probabilities=True)
    diff = np.abs(tiled.probabilities.astype(int) - whole.probabilities.astype(int))
    assert diff.max() > 20


@pytest.mark.slow
def test_bundled_em_model_is_seam_free_at_defaults():
    from napari_semseg.core.models import load_model
    from napari_semseg.sample_data import sample_path

    try:
        path = sample_path("em_model.safetensors")
    except Exception:
        pytest.skip("bundled EM model not available")
    if not path.exists():
        pytest.skip("bundled EM model not available")
    import tifffile

    model = load_model(path)
    em = tifffile.imread(sample_path("em.tif"))
    # a 1400 x 1300 mosaic of mirrored copies: larger than one default tile, not a multiple
    mosaic = np.block([[em, em[:, ::-1], em], [em[::-1], em[::-1, ::-1], em[::-1]],
                       [em, em[:, ::-1], em]])[:1400, :1300]
    whole = segment(mosaic, model, device="cpu", tile=1536, probabilities=True)
    for tile, overlap in [(None, None), (640, 128), (896, 192)]:
        tiled = segment(mosaic, model, device="cpu", tile=tile, overlap=overlap,
                        probabilities=True)
        agreement = (tiled.labels == whole.labels).mean()
        diff = np.abs(tiled.probabilities.astype(int) - whole.probabilities.astype(int))
        assert agreement >= 0.999, (tile, overlap, agreement)
        assert diff.mean() < 0.5, (tile, overlap, diff.mean())
