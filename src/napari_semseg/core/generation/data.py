"""Training pairs for a generator: random crops of (image, label map), read window by window.

Every crop is read from the lazily opened sources (only the window), mapped to the network's
intensity range ``[-1, 1]`` with the per-channel ``low``/``high`` values that the generator file
stores, flipped/rotated with its label map, and given a *sparse* copy of the label map for the
generator's input: with probability ``dropout`` a random box of it is set to 0 (unconstrained),
so the generator learns to fill unconstrained regions plausibly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import flip_rotate
from ..io import ImageSource
from .noise import noise_window


@dataclass
class GanBatch:
    """One training batch (all tensors on the CPU until moved).

    ``real``: images in ``[-1, 1]`` ``(B, C, P, P)``; ``labels``: the full label maps
    ``(B, P, P)`` (0 = not annotated); ``sparse``: the generator's input labels, with boxes set
    to 0; ``noise``: ``(B, N, P, P)``.
    """

    real: torch.Tensor
    labels: torch.Tensor
    sparse: torch.Tensor
    noise: torch.Tensor

    def to(self, device: torch.device) -> GanBatch:
        return GanBatch(*(t.to(device) for t in (self.real, self.labels, self.sparse,
                                                 self.noise)))


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``(B, H, W)`` labels 0..K -> ``(B, K, H, W)`` float one-hot; label 0 is all zeros."""
    oh = F.one_hot(labels.long().clamp(0, classes), classes + 1)
    return oh[..., 1:].permute(0, 3, 1, 2).float()


def to_unit_range(block: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Image values ``(C, h, w)`` -> ``[-1, 1]`` (``low`` -> -1, ``high`` -> 1, clipped)."""
    span = np.where(high - low > 1e-12, high - low, 1.0)
    x = (block.astype(np.float32) - low[:, None, None]) / span[:, None, None]
    return np.clip(x * 2.0 - 1.0, -1.0, 1.0)


def _read_padded(source: ImageSource, plane: int, y: int, x: int, size: int) -> np.ndarray:
    h, w = source.plane_shape
    block = source.read(plane, slice(y, min(h, y + size)), slice(x, min(w, x + size)))
    pad_y, pad_x = size - block.shape[1], size - block.shape[2]
    if pad_y or pad_x:
        mode = "reflect" if min(block.shape[1:]) > max(pad_y, pad_x) else "symmetric"
        block = np.pad(block, ((0, 0), (0, pad_y), (0, pad_x)),
                       mode=mode)  # type: ignore[call-overload]
    return block


class PairSampler:
    """Draw random crops of ``size`` pixels from image/label pairs (seeded).

    Crops are drawn from the images in proportion to their area, anywhere in them.
    """

    def __init__(self, images: list[ImageSource], labels: list[ImageSource], size: int,
                 low: list[float], high: list[float], classes: int, noise_channels: tuple[int, int,
                 int], *, seed: int = 0, dropout: float = 0.5, augment: bool = True) -> None:
        self.images, self.labels, self.size = images, labels, size
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        self.classes, self.noise_channels = classes, noise_channels
        self.dropout, self.augment = dropout, augment
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        areas = np.array([s.n_planes * np.prod(s.plane_shape) for s in images], np.float64)
        self.weights = areas / areas.sum()

    def _crop(self) -> tuple[np.ndarray, np.ndarray]:
        i = int(self.rng.choice(len(self.images), p=self.weights))
        img, lab = self.images[i], self.labels[i]
        h, w = img.plane_shape
        p = int(self.rng.integers(img.n_planes))
        y = int(self.rng.integers(0, max(1, h - self.size + 1)))
        x = int(self.rng.integers(0, max(1, w - self.size + 1)))
        image = to_unit_range(_read_padded(img, p, y, x, self.size), self.low, self.high)
        return image, _read_padded(lab, p, y, x, self.size)[0]

    def _noise(self, n: int) -> np.ndarray:
        fine, smooth, cell = self.noise_channels
        out = []
        for _ in range(n):
            seed = int(self.rng.integers(2**31))
            y, x = (int(v) for v in self.rng.integers(0, 2**20, 2))
            out.append(noise_window(seed, slice(y, y + self.size), slice(x, x + self.size),
                                    fine, smooth, cell))
        return np.stack(out)

    def _drop(self, labels: torch.Tensor) -> torch.Tensor:
        """A copy of ``labels`` with a random box set to 0 in a ``dropout`` share of samples."""
        sparse = labels.clone()
        s = self.size
        for b in range(labels.shape[0]):
            if self.rng.random() >= self.dropout:
                continue
            bh, bw = (int(v) for v in self.rng.integers(s // 4, 3 * s // 4 + 1, 2))
            y, x = int(self.rng.integers(0, s - bh + 1)), int(self.rng.integers(0, s - bw + 1))
            sparse[b, y:y + bh, x:x + bw] = 0
        return sparse

    def batch(self, n: int) -> GanBatch:
        crops = [self._crop() for _ in range(n)]
        real = torch.from_numpy(np.stack([c[0] for c in crops]))
        labels = torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.int64))
        labels = labels.clamp_(0, self.classes)
        if self.augment and self.size > 1:
            real, labels = flip_rotate(real, labels, self.gen)
        noise = torch.from_numpy(self._noise(n))
        return GanBatch(real.contiguous(), labels.contiguous(), self._drop(labels), noise)
