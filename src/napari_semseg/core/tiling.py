"""Tile grid aligned to the network stride, and blending weights that sum to one.

Tiles along an axis start at multiples of ``step = tile - overlap``; the last tile is shifted so
that it ends at the image edge rounded up to the stride. Every tile origin is a multiple of the
stride, so each tile sees the same downsampling grid as a whole-image pass would, and its only
padding is the same reflect padding (less than one stride) a whole-image pass needs.

Neighbouring tiles blend over a band of ``overlap`` pixels with complementary cos²/sin² ramps, so
the weights of all tiles covering a pixel sum to exactly one: accumulating ``weight * probability``
per output chunk is all the blending needs, no weight-sum buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np

from .errors import SemSegError


def round_up(n: int, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


@dataclass(frozen=True)
class AxisTiles:
    """Tiles along one axis: ``origins[i]`` to ``origins[i] + size``; the image has ``length``."""

    length: int
    size: int
    origins: tuple[int, ...]
    overlap: int

    def weights(self, i: int) -> np.ndarray:
        """Blending weights of tile ``i`` (length ``size``); zero beyond the image edge."""
        w = np.ones(self.size, np.float32)
        o = self.origins[i]
        if i > 0:  # ramp up over the last `overlap` pixels of the previous tile
            prev_end = self.origins[i - 1] + self.size
            start, stop = prev_end - self.overlap - o, prev_end - o
            w[:start] = 0.0
            t = (np.arange(start, stop) - start + 0.5) / self.overlap
            w[start:stop] = np.sin(0.5 * np.pi * t) ** 2
        if i < len(self.origins) - 1:  # ramp down over our own last `overlap` pixels
            start = self.size - self.overlap
            t = (np.arange(start, self.size) - start + 0.5) / self.overlap
            w[start:] *= np.cos(0.5 * np.pi * t) ** 2
        w[max(0, self.length - o):] = 0.0
        return w


def plan_axis(length: int, tile: int, overlap: int, stride: int) -> AxisTiles:
    """Tile origins along an axis of ``length`` pixels.

    ``tile`` and ``overlap`` must be multiples of ``stride``. An axis no longer than ``tile`` gets
    one tile of ``length`` rounded up to the stride.
    """
    if tile % stride or overlap % stride:
        raise SemSegError(f"tile ({tile}) and overlap ({overlap}) must be multiples of the network "
                          f"stride {stride}")
    if length <= tile:
        return AxisTiles(length, round_up(length, stride), (0,), overlap)
    step = tile - overlap
    origins = list(range(0, length - tile, step))
    origins.append(round_up(length, stride) - tile)
    return AxisTiles(length, tile, tuple(origins), overlap)


def normalize_tile(tile: int | None, overlap: int | None, stride: int, default_tile: int,
                   default_overlap: int, shape: tuple[int, int]) -> tuple[int, int]:
    """Resolve tile and overlap: defaults, alignment to the stride, and range checks."""
    tile = default_tile if tile is None else int(tile)
    overlap = default_overlap if overlap is None else int(overlap)
    min_tile = 2 * stride
    if tile < min_tile:
        raise SemSegError(f"tile {tile} is smaller than this network's minimum of {min_tile} "
                          f"pixels (twice its stride {stride}); use --tile {max(min_tile, 256)} or "
                          "more")
    tile = round_up(tile, stride)
    overlap = round_up(overlap, stride) if overlap > 0 else 0
    if overlap >= tile // 2 + 1:
        raise SemSegError(f"overlap {overlap} must be less than half the tile ({tile})")
    return tile, overlap


@dataclass(frozen=True)
class TileGrid:
    """2D tile grid plus the output chunk grid of one plane."""

    rows: AxisTiles
    cols: AxisTiles
    chunk: int

    @classmethod
    def plan(cls, shape: tuple[int, int], tile: int, overlap: int, stride: int,
             chunk: int) -> TileGrid:
        return cls(plan_axis(shape[0], tile, overlap, stride),
                   plan_axis(shape[1], tile, overlap, stride), chunk)

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.length, self.cols.length

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.rows.size, self.cols.size

    @property
    def n_tiles(self) -> int:
        return len(self.rows.origins) * len(self.cols.origins)

    @property
    def chunk_counts(self) -> tuple[int, int]:
        return math.ceil(self.rows.length / self.chunk), math.ceil(self.cols.length / self.chunk)

    def tiles(self) -> list[tuple[int, int]]:
        """Tile indices ``(i, j)`` in raster order."""
        return list(product(range(len(self.rows.origins)), range(len(self.cols.origins))))

    def chunk_region(self, ci: int, cj: int) -> tuple[slice, slice]:
        c = self.chunk
        return (slice(ci * c, min((ci + 1) * c, self.rows.length)),
                slice(cj * c, min((cj + 1) * c, self.cols.length)))

    def tile_region(self, i: int, j: int) -> tuple[slice, slice]:
        """Image region of tile ``(i, j)``, clipped to the image."""
        y, x = self.rows.origins[i], self.cols.origins[j]
        return (slice(y, min(y + self.rows.size, self.rows.length)),
                slice(x, min(x + self.cols.size, self.cols.length)))

    def weight(self, i: int, j: int) -> np.ndarray:
        return np.outer(self.rows.weights(i), self.cols.weights(j))

    def chunks_of_tile(self, i: int, j: int) -> list[tuple[int, int]]:
        """Output chunks that tile ``(i, j)`` contributes to (non-zero weight)."""
        out = []
        for axis, idx in ((self.rows, i), (self.cols, j)):
            w = axis.weights(idx)
            nz = np.nonzero(w)[0]
            lo, hi = axis.origins[idx] + nz[0], axis.origins[idx] + nz[-1]
            out.append(range(lo // self.chunk, hi // self.chunk + 1))
        return [(a, b) for a in out[0] for b in out[1]]

    def incidence(self) -> dict[tuple[int, int], list[tuple[int, int]]]:
        """For every chunk, the tiles that contribute to it."""
        inc: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for t in self.tiles():
            for c in self.chunks_of_tile(*t):
                inc.setdefault(c, []).append(t)
        return inc
