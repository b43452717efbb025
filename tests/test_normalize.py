"""Normalization statistics from a bounded sample, stored and applied per channel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_semseg.core.errors import SemSegError
from napari_semseg.core.io import open_image
from napari_semseg.core.normalize import estimate_normalization, sample_pixels


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32])
def test_percentile_maps_range_to_unit_interval(dtype):
    rng = np.random.default_rng(0)
    img = (rng.random((200, 300, 2)) * [100, 1000] + [10, 50]).astype(dtype)
    norm = estimate_normalization(open_image(img), low=0, high=100)
    out = norm.apply(np.moveaxis(img, -1, 0))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.min(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out.max(axis=(1, 2)), 1, atol=1e-5)


def test_meanstd_and_torch_agree_with_numpy():
    img = np.random.default_rng(1).normal(5, 3, (100, 100)).astype(np.float32)
    norm = estimate_normalization(open_image(img), mode="meanstd")
    a = norm.apply(img[None])
    b = norm.apply_torch(torch.from_numpy(img[None, None])).numpy()[0]
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert abs(a.mean()) < 1e-3 and abs(a.std() - 1) < 1e-3


def test_sample_is_bounded_for_large_lazy_images():
    import dask.array as da

    img = da.zeros((20000, 20000), dtype=np.uint8, chunks=1024)
    sample = sample_pixels(open_image(img), max_pixels=2**16)
    assert sample.shape[0] == 1 and sample.shape[1] <= 2**16


def test_nan_is_refused():
    img = np.ones((50, 50), np.float32)
    img[3, 3] = np.nan
    with pytest.raises(SemSegError, match="NaN"):
        estimate_normalization(open_image(img))


def test_constant_image_does_not_divide_by_zero():
    norm = estimate_normalization(open_image(np.full((40, 40), 7, np.uint8)))
    assert np.isfinite(norm.apply(np.full((1, 4, 4), 7, np.uint8))).all()
