"""Where the annotations are, the train/validation split by region, and patch sampling.

Annotations are scanned once, band by band (never a whole large plane in float), into a bounded
random sample of annotated pixel coordinates per class plus per-block pixel counts. The planes
are cut into square blocks; whole blocks of annotations are held out for validation (a split by
region, not by random pixel, so validation pixels are not neighbours of training pixels).
Training patches are centred near annotated pixels of the training blocks, drawn class by class
so that rare classes are seen as often as common ones, and only their windows are read from the
image. Labels of validation blocks are erased from training patches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .io import ImageSource

MAX_POINTS_PER_CLASS = 200_000


@dataclass
class _Points:
    """A bounded, uniformly thinned sample of annotated pixels of one class."""

    cap: int
    keep: float = 1.0
    parts: list[np.ndarray] = field(default_factory=list)  # rows of (image, plane, y, x)
    n: int = 0

    def add(self, pts: np.ndarray, rng: np.random.Generator) -> None:
        if self.keep < 1.0:
            pts = pts[rng.random(len(pts)) < self.keep]
        self.parts.append(pts)
        self.n += len(pts)
        while self.n > 2 * self.cap:
            allp = np.concatenate(self.parts)
            allp = allp[rng.random(len(allp)) < 0.5]
            self.parts, self.n = [allp], len(allp)
            self.keep *= 0.5

    def array(self) -> np.ndarray:
        if not self.parts:
            return np.zeros((0, 4), np.int64)
        return np.concatenate(self.parts)


@dataclass
class AnnotationIndex:
    """Summary of the annotations of a list of images.

    Attributes
    ----------
    counts
        Annotated pixels per class, ``(K + 1,)`` indexed by label (entry 0 unused).
    block
        Edge of the square blocks used for the validation split.
    block_counts
        ``{(image, plane, block_row, block_col): counts (K + 1,)}`` for blocks with annotations.
    points
        Per class ``k`` (index ``k``), an ``(n, 4)`` array of ``(image, plane, y, x)``: a uniform
        sample of the annotated pixels of that class (all of them up to a bound).
    weights
        Per class, the sampling weight of each point (the inverse of its thinning rate).
    max_label
        Largest label value found.
    """

    counts: np.ndarray
    block: int
    block_counts: dict[tuple[int, int, int, int], np.ndarray]
    points: list[np.ndarray]
    weights: list[np.ndarray]
    max_label: int

    @property
    def classes_present(self) -> list[int]:
        return [k for k in range(1, len(self.counts)) if self.counts[k] > 0]


def scan_annotations(annotations: list[ImageSource], block: int, *, seed: int = 0,
                     max_points: int = MAX_POINTS_PER_CLASS, n_classes: int | None = None
                     ) -> AnnotationIndex:
    """Scan annotation planes band by band; see :class:`AnnotationIndex`.

    ``n_classes`` bounds the classes kept (larger labels are counted in ``max_label`` only).
    Band height is a multiple of ``block`` holding at most about 16 M pixels.
    """
    rng = np.random.default_rng(seed)
    max_label = 0
    for src in annotations:
        h, w = src.plane_shape
        rows = max(block, (2**24 // max(w, 1)) // block * block)
        for p in range(src.n_planes):
            for y0 in range(0, h, rows):
                lab = src.read(p, slice(y0, min(h, y0 + rows)), slice(0, w))[0]
                if lab.size:
                    max_label = max(max_label, int(lab.max()))
    k_all = n_classes if n_classes is not None else max_label
    counts = np.zeros(k_all + 1, np.int64)
    block_counts: dict[tuple[int, int, int, int], np.ndarray] = {}
    pts = [_Points(max_points) for _ in range(k_all + 1)]
    for i, src in enumerate(annotations):
        h, w = src.plane_shape
        rows = max(block, (2**24 // max(w, 1)) // block * block)
        nbx = -(-w // block)
        for p in range(src.n_planes):
            for y0 in range(0, h, rows):
                lab = src.read(p, slice(y0, min(h, y0 + rows)), slice(0, w))[0]
                ys, xs = np.nonzero((lab > 0) & (lab <= k_all))
                if not len(ys):
                    continue
                vals = lab[ys, xs].astype(np.int64)
                ys = ys + y0
                bid = (ys // block) * nbx + xs // block
                key = bid * (k_all + 1) + vals
                uniq, cnt = np.unique(key, return_counts=True)
                for u, c in zip(uniq.tolist(), cnt.tolist(), strict=True):
                    b, k = divmod(u, k_all + 1)
                    by, bx = divmod(b, nbx)
                    arr = block_counts.setdefault((i, p, by, bx), np.zeros(k_all + 1, np.int64))
                    arr[k] += c
                for k in np.unique(vals).tolist():
                    sel = vals == k
                    counts[k] += int(sel.sum())
                    rows_k = np.stack([np.full(int(sel.sum()), i), np.full(int(sel.sum()), p),
                                       ys[sel], xs[sel]], axis=1).astype(np.int64)
                    pts[k].add(rows_k, rng)
    points = [pt.array() for pt in pts]
    weights = [np.full(len(a), 1.0 / pt.keep) for a, pt in zip(points, pts, strict=True)]
    return AnnotationIndex(counts, block, block_counts, points, weights, max_label)


def split_blocks(index: AnnotationIndex, fraction: float, seed: int = 0,
                 keep: set[tuple[int, int, int, int]] | None = None
                 ) -> set[tuple[int, int, int, int]]:
    """Choose validation blocks holding about ``fraction`` of the annotated pixels.

    Blocks are taken in a seeded random order; a block is skipped if taking it would leave a
    class with less than half of its pixels for training. Blocks in ``keep`` (an earlier split)
    stay in validation. Returns an empty set when there are fewer than 2 annotated blocks or
    ``fraction`` is 0.
    """
    blocks = sorted(index.block_counts)
    if fraction <= 0 or len(blocks) < 2:
        return set()
    total = index.counts.copy()
    goal = fraction * total[1:].sum()
    held = np.zeros_like(total)
    chosen: set[tuple[int, int, int, int]] = set()
    for b in blocks:
        if keep and b in keep:
            chosen.add(b)
            held += index.block_counts[b]
    order = np.random.default_rng(seed).permutation(len(blocks))
    for j in order:
        if held[1:].sum() >= goal:
            break
        b = blocks[j]
        if b in chosen:
            continue
        after = held + index.block_counts[b]
        if np.any((total > 0) & (after > total / 2)):
            continue
        chosen.add(b)
        held = after
    if len(chosen) == len(blocks):
        return set()
    return chosen


class PatchSampler:
    """Reads training patches centred near annotated pixels of the training blocks.

    Parameters
    ----------
    images, annotations
        Opened sources (same planes and plane shapes pairwise).
    index
        :class:`AnnotationIndex` of ``annotations``.
    validation_blocks
        Blocks whose labels are erased from training patches and whose pixels are never centres.
    rng
        Random generator (the only source of randomness, for reproducibility).
    class_balance
        1: classes drawn uniformly (rare classes as often as common ones); 0: in proportion to
        their annotated pixels; in between: a mixture.
    """

    def __init__(self, images: list[ImageSource], annotations: list[ImageSource],
                 index: AnnotationIndex, validation_blocks: set, rng: np.random.Generator,
                 class_balance: float = 1.0) -> None:
        self.images, self.annotations, self.index = images, annotations, index
        self.val = validation_blocks
        self.rng = rng
        self.block = index.block
        self.classes: list[int] = []
        self.cdf: list[np.ndarray] = []
        self.pools: list[np.ndarray] = []
        sizes = []
        for k in index.classes_present:
            pts = index.points[k]
            wts = index.weights[k]
            if self.val and len(pts):
                keys = zip(pts[:, 0].tolist(), pts[:, 1].tolist(),
                           (pts[:, 2] // self.block).tolist(), (pts[:, 3] // self.block).tolist(),
                           strict=True)
                train = np.fromiter((key not in self.val for key in keys), bool, len(pts))
                pts, wts = pts[train], wts[train]
            if not len(pts):
                continue
            self.classes.append(k)
            self.pools.append(pts)
            c = np.cumsum(wts)
            self.cdf.append(c / c[-1])
            sizes.append(float(np.sum(wts)))
        if not self.classes:
            raise ValueError("no annotated pixel outside the validation blocks")
        s = np.asarray(sizes)
        self.class_p = class_balance / len(s) + (1 - class_balance) * s / s.sum()

    def centre(self) -> tuple[int, int, int, int]:
        """A random annotated training pixel ``(image, plane, y, x)``."""
        c = int(self.rng.choice(len(self.classes), p=self.class_p))
        j = int(np.searchsorted(self.cdf[c], self.rng.random(), side="right"))
        j = min(j, len(self.pools[c]) - 1)
        i, p, y, x = self.pools[c][j].tolist()
        return i, p, y, x

    def read(self, size: int, jitter: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
        """One patch: raw image ``(C, size, size)`` and labels ``(size, size)`` (int64).

        The window is centred on an annotated training pixel shifted by up to
        ``jitter * size`` pixels, kept inside the plane, and padded (reflect for the image, 0 for
        labels) where the plane is smaller than ``size``.
        """
        i, p, y, x = self.centre()
        src, ann = self.images[i], self.annotations[i]
        h, w = src.plane_shape
        d = int(jitter * size)
        if d:
            y += int(self.rng.integers(-d, d + 1))
            x += int(self.rng.integers(-d, d + 1))
        y0 = int(np.clip(y - size // 2, 0, max(0, h - size)))
        x0 = int(np.clip(x - size // 2, 0, max(0, w - size)))
        rows, cols = slice(y0, min(h, y0 + size)), slice(x0, min(w, x0 + size))
        img = src.read(p, rows, cols)
        lab = ann.read(p, rows, cols)[0].astype(np.int64)
        if self.val:
            self._erase_validation(lab, i, p, y0, x0)
        ph, pw = size - img.shape[1], size - img.shape[2]
        if ph > 0 or pw > 0:
            mode: Literal["reflect", "edge"] = (
                "reflect" if min(img.shape[1:]) > 1 and ph < img.shape[1] and pw < img.shape[2]
                else "edge")
            img = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode=mode)
            lab = np.pad(lab, ((0, ph), (0, pw)))
        return img, lab

    def _erase_validation(self, lab: np.ndarray, i: int, p: int, y0: int, x0: int) -> None:
        b = self.block
        h, w = lab.shape
        for by in range(y0 // b, (y0 + h - 1) // b + 1):
            for bx in range(x0 // b, (x0 + w - 1) // b + 1):
                if (i, p, by, bx) in self.val:
                    ys = slice(max(0, by * b - y0), max(0, (by + 1) * b - y0))
                    xs = slice(max(0, bx * b - x0), max(0, (bx + 1) * b - x0))
                    lab[ys, xs] = 0
