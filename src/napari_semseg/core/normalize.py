"""Per-channel intensity normalization estimated from a bounded sample of a lazy image.

Statistics are computed at training time from a random sample of windows (never the whole image)
and stored in the model, so prediction uses exactly the training statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import SemSegError

if TYPE_CHECKING:
    from .io import ImageSource


@dataclass
class Normalization:
    """``x' = clip((x - offset) * scale, *clip)`` per channel.

    Attributes
    ----------
    mode
        ``"percentile"`` (offset = low percentile, scale = 1 / (high - low)), ``"meanstd"``
        (offset = mean, scale = 1 / std) or ``"none"``.
    offset, scale
        One value per channel.
    clip
        Bounds applied after scaling (``None``: no clipping).
    """

    mode: str = "percentile"
    offset: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    clip: list[float] | None = None
    low: float = 1.0
    high: float = 99.8

    def arrays(self, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
        """Offset and scale as float32 arrays of shape ``(C, 1, 1)``."""
        if self.mode == "none":
            return np.zeros((n_channels, 1, 1), np.float32), np.ones((n_channels, 1, 1), np.float32)
        if len(self.offset) != n_channels:
            raise SemSegError(f"normalization has {len(self.offset)} channels but the image has "
                              f"{n_channels}")
        off = np.asarray(self.offset, np.float32).reshape(-1, 1, 1)
        sc = np.asarray(self.scale, np.float32).reshape(-1, 1, 1)
        return off, sc

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalize a ``(C, H, W)`` or ``(B, C, H, W)`` array; returns float32."""
        c = x.shape[-3]
        off, sc = self.arrays(c)
        out = (x.astype(np.float32, copy=False) - off) * sc
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        return out

    def apply_torch(self, x):
        """Normalize a ``(B, C, H, W)`` torch tensor on its own device."""
        import torch

        off, sc = self.arrays(x.shape[1])
        out = (x.float() - torch.from_numpy(off).to(x.device)) * torch.from_numpy(sc).to(x.device)
        if self.clip is not None:
            out = out.clamp_(self.clip[0], self.clip[1])
        return out


def sample_pixels(source: ImageSource, max_pixels: int = 2**22, window: int = 256,
                  seed: int = 0) -> np.ndarray:
    """Read a bounded random sample of pixels, ``(C, n)``, from random windows of the image.

    Images with fewer than ``max_pixels`` pixels are read whole (plane by plane).
    """
    rng = np.random.default_rng(seed)
    n_planes, (h, w) = source.n_planes, source.plane_shape
    total = n_planes * h * w
    parts = []
    if total <= max_pixels:
        for p in range(n_planes):
            parts.append(source.read(p, slice(0, h), slice(0, w)).reshape(source.n_channels, -1))
    else:
        wy, wx = min(window, h), min(window, w)
        n_windows = max(1, max_pixels // (wy * wx))
        for _ in range(n_windows):
            p = int(rng.integers(n_planes))
            y = int(rng.integers(0, h - wy + 1))
            x = int(rng.integers(0, w - wx + 1))
            parts.append(source.read(p, slice(y, y + wy), slice(x, x + wx))
                         .reshape(source.n_channels, -1))
    return np.concatenate(parts, axis=1)


def estimate_normalization(source: ImageSource, mode: str = "percentile", low: float = 1.0,
                           high: float = 99.8, max_pixels: int = 2**22,
                           seed: int = 0) -> Normalization:
    """Estimate per-channel statistics from a bounded random sample of a (lazy) image.

    Parameters
    ----------
    source
        The image, opened with :func:`napari_semseg.core.io.open_image`.
    mode
        ``"percentile"`` or ``"meanstd"``.
    low, high
        Percentiles for ``"percentile"`` mode.
    max_pixels
        Upper bound on the number of pixels read.
    """
    if mode not in ("percentile", "meanstd", "none"):
        raise SemSegError(f"unknown normalization '{mode}'; use percentile, meanstd or none")
    if mode == "none":
        return Normalization(mode="none")
    sample = sample_pixels(source, max_pixels=max_pixels, seed=seed).astype(np.float64)
    if not np.isfinite(sample).all():
        raise SemSegError("the image contains NaN or infinite pixels; replace them (e.g. with "
                          "numpy.nan_to_num) before segmenting or training")
    if mode == "percentile":
        lo = np.percentile(sample, low, axis=1)
        hi = np.percentile(sample, high, axis=1)
        span = np.where(hi - lo > 1e-12, hi - lo, 1.0)
        return Normalization(mode="percentile", offset=lo.tolist(), scale=(1.0 / span).tolist(),
                             clip=[-1.0, 2.0], low=low, high=high)
    mean = sample.mean(axis=1)
    std = sample.std(axis=1)
    std = np.where(std > 1e-12, std, 1.0)
    return Normalization(mode="meanstd", offset=mean.tolist(), scale=(1.0 / std).tolist(), clip=None)
