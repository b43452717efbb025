"""Tile grid aligned to the network stride, and blending weights that sum to one.

Tiles along an axis start at multiples of ``step = tile - overlap``; the last tile is shifted so
that it ends at the image edge rounded up to the stride. Every tile origin is a multiple of the
stride, so each tile sees the same downsampling grid as a whole-image pass would, and its only
padding is the same reflect padding (less than one stride) a whole-image pass needs.

Neighbouring tiles share a band of ``overlap`` pixels. Inside the band, the outermost ``margin``
pixels of each tile get weight zero (they lack context: a convolution there sees the tile's zero
padding instead of the neighbouring pixels) and the rest is blended with complementary cos²/sin²
ramps. The weights of all tiles covering a pixel therefore sum to exactly one, and accumulating
``weight * probability`` per output chunk is all the blending needs (no weight-sum buffer).
``margin = overlap / 2`` degenerates to cropping each tile at the middle of the band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import product

import numpy as np

from .errors import SemSegError


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n``."""
    return int(math.ceil(n / multiple) * multiple)


def default_margin(overlap: int) -> int:
    """Zero-weight margin used inside an overlap band: a quarter of it (see module docs)."""
    return overlap // 4


def ramp(n: int) -> np.ndarray:
    """``n`` increasing weights in (0, 1) whose mirror image sums with them to one (sin²)."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    return (np.sin(0.5 * np.pi * t) ** 2).astype(np.float32)


@dataclass(frozen=True)
class AxisTiles:
    """Tiles along one axis: ``origins[i]`` to ``origins[i] + size``; the image has ``length``.

    ``overlap`` is the blending band between neighbours and ``margin`` the zero-weight part of
    the band at each tile's edge.
    """

    length: int
    size: int
    origins: tuple[int, ...]
    overlap: int
    margin: int = 0
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __len__(self) -> int:
        return len(self.origins)

    def band(self, i: int) -> tuple[int, int]:
        """Image coordinates ``[start, stop)`` of the band that tile ``i`` shares with tile i-1."""
        prev_end = self.origins[i - 1] + self.size
        return prev_end - self.overlap, prev_end

    def weights(self, i: int) -> np.ndarray:
        """Blending weights of tile ``i`` (length ``size``, float32); zero beyond the image."""
        if i in self._cache:
            return self._cache[i]
        w = np.ones(self.size, np.float32)
        o, m = self.origins[i], self.margin
        n = self.overlap - 2 * m
        if i > 0:  # ramp up inside the band shared with the previous tile
            start, stop = (b - o for b in self.band(i))
            w[:start + m] = 0.0
            if n > 0:
                w[start + m:stop - m] = ramp(n)
        if i < len(self.origins) - 1:  # ramp down inside the band shared with the next tile
            start, stop = (b - o for b in self.band(i + 1))
            w[stop - m:] = 0.0
            if n > 0:
                w[start + m:stop - m] *= ramp(n)[::-1]
        w[max(0, self.length - o):] = 0.0
        w.setflags(write=False)
        self._cache[i] = w
        return w

    def support(self, i: int) -> tuple[int, int]:
        """Image coordinates ``[lo, hi)`` where tile ``i`` has non-zero weight."""
        nz = np.flatnonzero(self.weights(i))
        o = self.origins[i]
        return o + int(nz[0]), o + int(nz[-1]) + 1


def plan_axis(length: int, tile: int, overlap: int, stride: int, margin: int = 0) -> AxisTiles:
    """Tile origins along an axis of ``length`` pixels.

    ``tile`` and ``overlap`` must be multiples of ``stride``; ``0 <= 2 * margin <= overlap``. An
    axis no longer than ``tile`` gets one tile of ``length`` rounded up to the stride.
    """
    if tile % stride or overlap % stride:
        raise SemSegError(f"tile ({tile}) and overlap ({overlap}) must be multiples of the network "
                          f"stride {stride}")
    if not 0 <= 2 * margin <= overlap:
        raise SemSegError(f"blending margin {margin} must be between 0 and half the overlap "
                          f"({overlap})")
    if length <= tile:
        return AxisTiles(length, round_up(length, stride), (0,), overlap, margin)
    step = tile - overlap
    origins = list(range(0, length - tile, step))
    origins.append(round_up(length, stride) - tile)
    if len(origins) > 1 and origins[-1] - origins[-2] < 0:  # pragma: no cover - defensive
        origins.pop(-2)
    return AxisTiles(length, tile, tuple(origins), overlap, margin)


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
    # a tile larger than the image and the default buys nothing but memory (--tile 100000
    # on a 512-pixel image asked for 80 GB): one tile of that size covers the image anyway
    tile = min(round_up(tile, stride), max(default_tile, round_up(max(shape), stride)))
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
             chunk: int, margin: int | None = None) -> TileGrid:
        """Plan tiles of ``tile`` pixels overlapping by ``overlap`` over a plane of ``shape``.

        ``margin`` defaults to :func:`default_margin` of the overlap.
        """
        m = default_margin(overlap) if margin is None else int(margin)
        return cls(plan_axis(shape[0], tile, overlap, stride, m),
                   plan_axis(shape[1], tile, overlap, stride, m), chunk)

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

    def chunks(self) -> list[tuple[int, int]]:
        """All chunk indices ``(ci, cj)`` in raster order."""
        rows, cols = self.chunk_counts
        return list(product(range(rows), range(cols)))

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
            lo, hi = axis.support(idx)
            out.append(range(lo // self.chunk, (hi - 1) // self.chunk + 1))
        return [(a, b) for a in out[0] for b in out[1]]

    def incidence(self) -> dict[tuple[int, int], list[tuple[int, int]]]:
        """For every chunk, the tiles that contribute to it (in raster order)."""
        inc: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for t in self.tiles():
            for c in self.chunks_of_tile(*t):
                inc.setdefault(c, []).append(t)
        return inc

    @property
    def column_major(self) -> bool:
        """Tiles are processed column by column when the plane is wider than tall."""
        return self.cols.length > self.rows.length

    def order(self, tiles: set[tuple[int, int]] | list[tuple[int, int]]
              ) -> list[tuple[int, int]]:
        """``tiles`` in processing order: rows of tiles, or columns for a plane wider than tall.

        Between chunks, the engine keeps the blending bands of the tiles computed so far that
        reach into unfinished chunks: about one band along the processing direction. Walking
        along the shorter side keeps that to ``min(height, width) x overlap`` pixels, however
        long the other side is.
        """
        if self.column_major:
            return sorted(tiles, key=lambda t: (t[1], t[0]))
        return sorted(tiles)

    def tiles_for(self, chunks: set[tuple[int, int]] | list[tuple[int, int]]
                  ) -> list[tuple[int, int]]:
        """The tiles needed to finish ``chunks``, each once, in processing order."""
        inc = self.incidence()
        return self.order({t for c in chunks for t in inc[c]})

    def computed_pixels(self, chunks: set[tuple[int, int]] | None = None) -> int:
        """Pixels the network processes to finish ``chunks`` (all by default)."""
        tiles = self.tiles() if chunks is None else self.tiles_for(chunks)
        return len(tiles) * self.rows.size * self.cols.size
