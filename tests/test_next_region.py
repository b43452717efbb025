"""Next region to paint: planted uncertain regions, painted ones excluded, diverse picks."""

import dask.array as da
import numpy as np
import pytest

from napari_semseg.core.errors import SemSegError
from napari_semseg.core.next_region import cell_means, confused_classes, next_regions


def _map(shape=(400, 600), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 40).astype(np.uint8)  # low background uncertainty


def _inside(region, y0, x0, y1, x1):
    cy, cx = region.center
    return y0 <= cy < y1 and x0 <= cx < x1


def test_picks_the_planted_uncertain_region():
    unc = _map()
    unc[250:310, 400:460] = 240
    regions = next_regions(unc, np.zeros(unc.shape, np.uint8), size=48, count=1)
    assert len(regions) == 1
    assert _inside(regions[0], 250, 400, 310, 460)
    assert regions[0].score > 0.8


def test_never_picks_a_painted_region():
    unc = _map()
    unc[250:310, 400:460] = 240  # the most uncertain place, but painted
    unc[50:100, 50:100] = 200
    ann = np.zeros(unc.shape, np.uint8)
    ann[280, 430] = 2  # one painted pixel is enough
    regions = next_regions(unc, ann, size=48, count=5)
    assert regions, "unpainted places remain"
    for r in regions:
        y0, x0, y1, x1 = r.box
        assert not ann[y0:y1, x0:x1].any()
    assert _inside(regions[0], 50, 50, 100, 100)


def test_successive_picks_go_elsewhere():
    unc = _map()
    unc[100:200, 100:200] = 250  # one large uncertain place...
    unc[300:340, 500:540] = 180  # ...and a smaller, less uncertain one
    regions = next_regions(unc, None, size=32, count=2, min_distance=200)
    assert _inside(regions[0], 100, 100, 200, 200)
    assert _inside(regions[1], 300, 500, 340, 540)
    # an earlier pick is avoided by the next call (the widget's successive clicks)
    again = next_regions(unc, None, size=32, count=1, min_distance=200,
                         avoid=[regions[0].center])
    assert _inside(again[0], 300, 500, 340, 540)
    ys = [r.center for r in next_regions(unc, None, size=32, count=4)]
    for i, a in enumerate(ys):
        for b in ys[i + 1:]:
            assert np.hypot(a[0] - b[0], a[1] - b[1]) >= 64


def test_lazy_downsampled_map_gives_the_same_place():
    unc = _map((3000, 2000))
    unc[2000:2200, 300:500] = 250
    lazy = da.from_array(unc, chunks=(512, 512))
    regions = next_regions(lazy, da.zeros(unc.shape, np.uint8, chunks=512), size=128,
                           count=1, max_cells=100)
    assert _inside(regions[0], 2000, 300, 2200, 500)


def test_cell_means_and_maxima():
    a = np.arange(36, dtype=np.float32).reshape(6, 6)
    np.testing.assert_allclose(cell_means(a, 3), [[7, 10], [25, 28]])
    np.testing.assert_allclose(cell_means(a, 4, reduce="max"), [[21, 23], [33, 35]])
    np.testing.assert_allclose(cell_means(a[:5], 4)[1], [a[4, :4].mean(), a[4, 4:].mean()])


def test_confused_classes_are_the_two_most_probable():
    probs = np.zeros((4, 20, 20), np.uint8)
    probs[0] = 20
    probs[2] = 120
    probs[3] = 115
    assert confused_classes(probs, (0, 0, 10, 10)) == (3, 4)
    unc = _map((20, 20))
    regions = next_regions(unc, None, probabilities=probs, size=8, count=1)
    assert regions[0].classes == (3, 4)


def test_bad_input_is_one_clear_line():
    with pytest.raises(SemSegError, match="must be 2D"):
        next_regions(np.zeros((2, 3, 4)), None)
    with pytest.raises(SemSegError, match="do not match"):
        next_regions(np.zeros((30, 40)), np.zeros((30, 41)))
