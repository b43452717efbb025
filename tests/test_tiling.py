"""Tile grid geometry and blending weights (pure numpy, fast)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_semseg.core.errors import SemSegError
from napari_semseg.core.tiling import (TileGrid, default_margin, normalize_tile, plan_axis, ramp,
                                       round_up)

LENGTHS = [1, 31, 32, 33, 100, 255, 256, 257, 1000, 1088, 2049, 5000]
SETTINGS = [(64, 0, 0), (64, 32, 0), (96, 32, 8), (128, 64, 16), (256, 64, 16), (256, 128, 32),
            (256, 128, 64), (1152, 128, 32)]


def coverage(axis) -> np.ndarray:
    total = np.zeros(axis.length, np.float64)
    for i, o in enumerate(axis.origins):
        w = axis.weights(i)
        stop = min(axis.length, o + axis.size)
        total[o:stop] += w[:stop - o]
        assert not w[stop - o:].any(), "weight beyond the image"
    return total


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("tile,overlap,margin", SETTINGS)
def test_weights_are_a_partition_of_unity(length, tile, overlap, margin):
    axis = plan_axis(length, tile, overlap, 32, margin)
    np.testing.assert_allclose(coverage(axis), 1.0, atol=1e-6)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("tile,overlap,margin", SETTINGS)
def test_origins_aligned_and_last_tile_ends_at_the_padded_edge(length, tile, overlap, margin):
    stride = 32
    axis = plan_axis(length, tile, overlap, stride, margin)
    assert all(o % stride == 0 for o in axis.origins)
    assert axis.size % stride == 0
    assert list(axis.origins) == sorted(set(axis.origins))
    assert axis.origins[0] == 0
    # the last tile ends at the image edge rounded up to the stride (less than one stride of
    # padding, exactly what a whole-image pass pads)
    assert axis.origins[-1] + axis.size == max(round_up(length, stride), axis.size)
    if length <= tile:
        assert axis.origins == (0,) and axis.size == round_up(length, stride)
    else:
        assert axis.size == tile
        steps = np.diff(axis.origins)
        assert (steps[:-1] == tile - overlap).all()
        assert 0 < steps[-1] <= tile - overlap


def test_margin_gets_zero_weight_and_ramp_is_monotonic():
    axis = plan_axis(1000, 256, 128, 32, margin=32)
    w1 = axis.weights(1)
    start, stop = (b - axis.origins[1] for b in axis.band(1))
    assert stop - start == 128
    assert not w1[:start + 32].any()  # outermost margin of the band: no weight
    up = w1[start + 32:stop - 32]
    assert (np.diff(up) > 0).all() and 0 < up[0] < 0.1 and 0.9 < up[-1] < 1
    assert (w1[stop - 32:stop] == 1).all()
    w0 = axis.weights(0)
    assert not w0[stop - 32 + axis.origins[1]:].any()  # previous tile stops before its edge


def test_margin_half_the_overlap_is_a_hard_crop():
    axis = plan_axis(700, 256, 64, 32, margin=32)
    for i in range(len(axis)):
        assert set(np.unique(axis.weights(i))) <= {0.0, 1.0}
    np.testing.assert_array_equal(coverage(axis), 1.0)


def test_ramp_is_symmetric():
    r = ramp(40)
    np.testing.assert_allclose(r + r[::-1], 1.0, atol=1e-6)


def test_invalid_settings_are_clear_errors():
    with pytest.raises(SemSegError, match="multiples of the network stride"):
        plan_axis(100, 100, 32, 32)
    with pytest.raises(SemSegError, match="margin"):
        plan_axis(1000, 256, 64, 32, margin=40)
    with pytest.raises(SemSegError, match="minimum"):
        normalize_tile(32, 0, 32, 1024, 64, (100, 100))
    with pytest.raises(SemSegError, match="less than half"):
        normalize_tile(256, 160, 32, 1024, 64, (100, 100))
    assert normalize_tile(250, 40, 32, 1024, 64, (100, 100)) == (256, 64)
    assert normalize_tile(None, None, 32, 1152, 128, (10, 10)) == (1152, 128)


def test_default_margin_is_a_quarter_of_the_overlap():
    assert default_margin(128) == 32 and default_margin(0) == 0


@pytest.mark.parametrize("shape", [(300, 260), (1000, 2100), (64, 700), (33, 33)])
def test_grid_2d_weights_sum_to_one_and_incidence_is_consistent(shape):
    grid = TileGrid.plan(shape, 256, 64, 32, chunk=192)
    total = np.zeros(shape)
    for i, j in grid.tiles():
        rows, cols = grid.tile_region(i, j)
        w = grid.weight(i, j)
        total[rows, cols] += w[:rows.stop - rows.start, :cols.stop - cols.start]
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    inc = grid.incidence()
    assert sorted(inc) == grid.chunks()
    for c, tiles in inc.items():
        rows, cols = grid.chunk_region(*c)
        # the tiles listed for a chunk are exactly those with non-zero weight inside it
        acc = np.zeros((rows.stop - rows.start, cols.stop - cols.start))
        for i, j in grid.tiles():
            y0, x0 = grid.rows.origins[i], grid.cols.origins[j]
            w = grid.weight(i, j)
            ys = slice(max(rows.start, y0) - y0, min(rows.stop, y0 + grid.rows.size) - y0)
            xs = slice(max(cols.start, x0) - x0, min(cols.stop, x0 + grid.cols.size) - x0)
            inside = ys.stop > ys.start and xs.stop > xs.start
            part = w[ys, xs] if inside else np.zeros(0)
            if part.size and part.any():
                assert (i, j) in tiles
                acc[ys.start + y0 - rows.start:ys.stop + y0 - rows.start,
                    xs.start + x0 - cols.start:xs.stop + x0 - cols.start] += part
            else:
                assert (i, j) not in tiles
        np.testing.assert_allclose(acc, 1.0, atol=1e-6)
    assert tiles == sorted(tiles)


def test_default_chunking_needs_each_chunk_plus_neighbour_bands():
    # tile = chunk + overlap: a chunk needs its own tile and the bands of the tiles before it
    grid = TileGrid.plan((4096, 4096), 1152, 128, 32, chunk=1024)
    assert grid.rows.origins == (0, 1024, 2048, 2944)
    assert len(grid.tiles_for([(0, 0)])) == 1
    assert len(grid.tiles_for([(1, 1)])) == 4
    assert grid.computed_pixels() == 16 * 1152 ** 2
    # a block of 2x2 chunks computes a 3x3 block of tiles (its border tiles are shared)
    assert len(grid.tiles_for([(1, 1), (1, 2), (2, 1), (2, 2)])) == 9


def test_processing_order_walks_along_the_shorter_side():
    tall = TileGrid.plan((3000, 1000), 256, 64, 32, chunk=192)
    wide = TileGrid.plan((1000, 3000), 256, 64, 32, chunk=192)
    assert not tall.column_major and wide.column_major
    assert tall.order(tall.tiles()) == tall.tiles()
    order = wide.order(wide.tiles())
    assert order[:3] == [(0, 0), (1, 0), (2, 0)]
    assert sorted(order) == wide.tiles()
    assert wide.tiles_for([(0, 1)]) == [(0, 0), (0, 1)]
