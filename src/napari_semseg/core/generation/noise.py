"""Noise that depends only on the seed and the absolute pixel position.

A generator's noise input must not depend on how the label map is cut into tiles: the noise of
pixel ``(y, x)`` is a hash of ``(seed, channel, y, x)``, so a tile computes exactly the noise a
whole-map pass would see there. Two kinds of channels:

- *fine*: independent standard normal values per pixel (texture, grain);
- *smooth*: standard normal values on a lattice of ``cell`` pixels, interpolated bilinearly
  (slowly varying appearance, e.g. staining or lighting across a large map).
"""

from __future__ import annotations

import numpy as np

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_SALT_SMOOTH = 0x5DEECE66D


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: a well-mixed 64-bit hash of each element (uint64, wraps)."""
    with np.errstate(over="ignore"):
        z = (z + _GOLDEN) & _MASK
        z = ((z ^ (z >> np.uint64(30))) * _M1) & _MASK
        z = ((z ^ (z >> np.uint64(27))) * _M2) & _MASK
        return z ^ (z >> np.uint64(31))


def _key(seed: int, channel: int, salt: int) -> np.uint64:
    base = np.array([(int(seed) * 1_000_003 + channel * 7919 + salt) & 0xFFFFFFFFFFFFFFFF],
                    np.uint64)
    return _splitmix64(base)[0]


def hashed_normal(seed: int, channel: int, rows: np.ndarray, cols: np.ndarray,
                  salt: int = 0) -> np.ndarray:
    """Standard normal values (float32) for the grid ``rows x cols`` of integer coordinates.

    The value at ``(r, c)`` depends only on ``seed``, ``channel``, ``salt``, ``r`` and ``c``.
    """
    r = (np.asarray(rows, np.int64).astype(np.uint64) * np.uint64(0x100000001B3))[:, None]
    c = np.asarray(cols, np.int64).astype(np.uint64)[None, :]
    with np.errstate(over="ignore"):
        h = _splitmix64(_splitmix64(r ^ _key(seed, channel, salt)) + c)
        h2 = _splitmix64(h ^ np.uint64(0xD6E8FEB86659FD93))
    # two uniforms in (0, 1) from the top 24 bits of each hash, then Box-Muller
    u1 = ((h >> np.uint64(40)).astype(np.float64) + 0.5) / 2.0**24
    u2 = ((h2 >> np.uint64(40)).astype(np.float64) + 0.5) / 2.0**24
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)


def _smooth(seed: int, channel: int, rows: slice, cols: slice, cell: int) -> np.ndarray:
    """Lattice noise with spacing ``cell`` interpolated bilinearly at pixel centres."""
    ys = (np.arange(rows.start, rows.stop) + 0.5) / cell - 0.5
    xs = (np.arange(cols.start, cols.stop) + 0.5) / cell - 0.5
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    ly = np.arange(y0.min(), y0.max() + 2)
    lx = np.arange(x0.min(), x0.max() + 2)
    lattice = hashed_normal(seed, channel, ly, lx, _SALT_SMOOTH)
    iy, ix = y0 - ly[0], x0 - lx[0]
    fy, fx = (ys - y0).astype(np.float32)[:, None], (xs - x0).astype(np.float32)[None, :]
    top = lattice[iy][:, ix] * (1 - fx) + lattice[iy][:, ix + 1] * fx
    bottom = lattice[iy + 1][:, ix] * (1 - fx) + lattice[iy + 1][:, ix + 1] * fx
    # bilinear interpolation shrinks the variance; rescale so values stay about unit normal
    out = top * (1 - fy) + bottom * fy
    var = ((1 - fy) ** 2 + fy**2) * ((1 - fx) ** 2 + fx**2)
    return (out / np.sqrt(var)).astype(np.float32)


def noise_window(seed: int, rows: slice, cols: slice, fine: int, smooth: int,
                 cell: int = 32) -> np.ndarray:
    """Noise channels ``(fine + smooth, h, w)`` of the window ``rows, cols`` (any coordinates,
    also beyond an image's edge)."""
    h, w = rows.stop - rows.start, cols.stop - cols.start
    out = np.empty((fine + smooth, h, w), np.float32)
    r = np.arange(rows.start, rows.stop)
    c = np.arange(cols.start, cols.stop)
    for k in range(fine):
        out[k] = hashed_normal(seed, k, r, c)
    for k in range(smooth):
        out[fine + k] = _smooth(seed, fine + k, rows, cols, cell)
    return out
