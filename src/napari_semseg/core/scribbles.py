"""Seeded scribbles from dense masks: brush strokes like the ones a person paints in napari.

Used by the scribble benchmark and to make the bundled training sample. The procedure is fixed
and deterministic for a seed:

1. For every class ``k`` (labels 1..K; 0 = not annotated), the region where strokes may go is the
   class mask eroded by the brush radius (so a stroke never crosses into another class), or the
   class mask itself where that erosion leaves nothing (thin structures such as membranes).
2. Each class gets a share of the pixel budget (``fraction`` of the annotated pixels)
   proportional to the square root of its area: people paint every class they see, big classes
   a little more. A share never exceeds half of the class's pixels.
3. A stroke starts at a random pixel of the region and walks one pixel at a time with a smoothly
   varying heading; at each step it takes, among headings within 60 degrees of the current one,
   the one closest to a slightly perturbed heading that stays inside the region (so it follows
   thin, curved structures), and stops after its length or when it is stuck. Lengths are drawn
   between ``length[0]`` and ``length[1]`` pixels.
4. Each stroke is dilated by the brush (a disk of ``radius``) and clipped to the class mask.
   Strokes are added until the class share is reached.
"""

from __future__ import annotations

import numpy as np

from .errors import SemSegError


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx) <= r * r + r * 0.5


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    from scipy import ndimage

    return ndimage.binary_erosion(mask, structure=_disk(radius), border_value=0)


def _walk(region: np.ndarray, start: tuple[int, int], length: int,
          rng: np.random.Generator) -> np.ndarray:
    """Points ``(n, 2)`` of a stroke that follows ``region`` from ``start``."""
    h, w = region.shape
    y, x = float(start[0]), float(start[1])
    heading = rng.uniform(0, 2 * np.pi)
    points = [(int(start[0]), int(start[1]))]
    offsets = np.deg2rad(np.array([0, -15, 15, -30, 30, -45, 45, -60, 60]))
    for _ in range(length):
        heading += rng.normal(0, 0.25)
        moved = False
        for off in offsets:
            a = heading + off
            ny, nx = y + np.sin(a), x + np.cos(a)
            iy, ix = int(round(ny)), int(round(nx))
            if 0 <= iy < h and 0 <= ix < w and region[iy, ix]:
                y, x, heading = ny, nx, a
                if (iy, ix) != points[-1]:
                    points.append((iy, ix))
                moved = True
                break
        if not moved:
            break
    return np.asarray(points, dtype=np.int64)


def _paint(points: np.ndarray, radius: int, shape: tuple[int, int]) -> tuple[np.ndarray, tuple]:
    """Brush mask of the stroke inside its bounding box, and that box's slices."""
    r = int(radius)
    y0, x0 = points.min(0) - r
    y1, x1 = points.max(0) + r + 1
    box = np.zeros((y1 - y0, x1 - x0), bool)
    box[points[:, 0] - y0, points[:, 1] - x0] = True
    if r > 0:
        from scipy import ndimage

        box = ndimage.binary_dilation(box, structure=_disk(r))
    cy0, cx0 = max(0, y0), max(0, x0)
    cy1, cx1 = min(shape[0], y1), min(shape[1], x1)
    box = box[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return box, (slice(cy0, cy1), slice(cx0, cx1))


def make_scribbles(mask: np.ndarray, *, fraction: float = 0.015, radius: int = 1,
                   length: tuple[int, int] = (30, 90), seed: int = 0,
                   classes: list[int] | None = None) -> np.ndarray:
    """Sparse brush strokes drawn inside the class regions of a dense mask.

    Parameters
    ----------
    mask
        2D dense labels, 0 = not annotated (ignored), classes 1..K.
    fraction
        Target share of the annotated pixels of ``mask`` to paint (about 1-2 % is typical).
    radius
        Brush radius in pixels (a stroke is ``2 * radius + 1`` pixels wide).
    length
        Range of stroke lengths in pixels.
    seed
        Random seed; the result is a pure function of the inputs and the seed.
    classes
        Classes to paint (default: every class present in ``mask``).

    Returns
    -------
    numpy.ndarray
        Scribbles with ``mask``'s shape (uint8 or uint16): class values on painted pixels, 0
        elsewhere. Every painted pixel has the class of ``mask`` at that pixel.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise SemSegError(f"make_scribbles needs a 2D mask, got shape {mask.shape}")
    if not 0 < fraction <= 1:
        raise SemSegError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    present = [int(k) for k in np.unique(mask) if k > 0]
    classes = present if classes is None else [k for k in classes if k in present]
    out = np.zeros(mask.shape, np.uint16 if mask.max() > 255 else np.uint8)
    if not classes:
        return out
    areas = {k: int((mask == k).sum()) for k in classes}
    budget = fraction * sum(areas.values())
    weights = np.sqrt(np.array([areas[k] for k in classes], float))
    shares = budget * weights / weights.sum()
    for k, share in zip(classes, shares, strict=True):
        _paint_class(out, mask, k, min(share, areas[k] / 2), radius, length, rng)
    return out


def _paint_class(out: np.ndarray, mask: np.ndarray, k: int, share: float, radius: int,
                 length: tuple[int, int], rng: np.random.Generator) -> None:
    """Add strokes of class ``k`` to ``out`` until about ``share`` new pixels are painted."""
    full = mask == k
    region = _erode(full, radius)
    if region.sum() < 10:
        region = full
    candidates = np.flatnonzero(region)
    painted = 0
    tries = 0
    while painted < share and tries < 10000:
        tries += 1
        start = np.unravel_index(candidates[rng.integers(len(candidates))], mask.shape)
        n = int(rng.integers(length[0], length[1] + 1))
        points = _walk(region, start, n, rng)
        box, (rows, cols) = _paint(points, radius, mask.shape)
        box &= full[rows, cols]
        new = box & (out[rows, cols] == 0)
        out[rows, cols][new] = k
        painted += int(new.sum())
