"""Seeded scribbles from dense masks."""

from __future__ import annotations

import numpy as np
import pytest

from napari_semseg.core.errors import SemSegError
from napari_semseg.core.scribbles import make_scribbles


def _mask():
    yy, xx = np.mgrid[:200, :240]
    mask = np.ones((200, 240), np.uint8)
    mask[(yy - 100) ** 2 + (xx - 80) ** 2 < 50 ** 2] = 2
    mask[:, 180:183] = 3  # a thin line, 3 pixels wide
    mask[:5] = 0          # not annotated
    return mask


def test_scribbles_are_sparse_correct_and_cover_every_class():
    mask = _mask()
    s = make_scribbles(mask, fraction=0.015, radius=1, seed=0)
    painted = s > 0
    assert 0.007 < painted.mean() < 0.03
    assert np.array_equal(s[painted], mask[painted])  # strokes never cross into another class
    assert set(np.unique(s[painted]).tolist()) == {1, 2, 3}  # the thin line too
    assert not painted[:5].any()


def test_scribbles_are_deterministic_for_a_seed():
    mask = _mask()
    a = make_scribbles(mask, seed=3)
    assert np.array_equal(a, make_scribbles(mask, seed=3))
    assert not np.array_equal(a, make_scribbles(mask, seed=4))


def test_scribbles_are_strokes_not_dots():
    from scipy import ndimage

    s = make_scribbles(_mask(), fraction=0.02, radius=2, length=(40, 60), seed=1)
    components, n = ndimage.label(s > 0)
    sizes = np.bincount(components.ravel())[1:]
    assert np.median(sizes) > 40  # connected strokes of many pixels


def test_scribbles_need_a_2d_mask():
    with pytest.raises(SemSegError, match="2D"):
        make_scribbles(np.ones((2, 8, 8), np.uint8))
