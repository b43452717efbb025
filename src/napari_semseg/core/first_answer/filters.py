"""Classic multiscale filter responses (the random forest's features) as feature-head inputs.

At each scale ``sigma``: the Gaussian-smoothed channels, and on the smoothed channel mean the
gradient magnitude, the Laplacian of Gaussian and the two Hessian eigenvalues -- the filter
set of ilastik and Labkit. Pretrained features see texture and context; these see edges,
ridges and blobs at the pixel's own scale, which phase-contrast halos and thin membranes are
made of. Everything is a full-resolution map computed from the (normalized) input tile by
separable convolutions with reflected borders (reach ``ceil(3 sigma) + 1`` pixels, inside the
feature head's halo).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

PER_SCALE_GREY = 4  # gradient magnitude, Laplacian, Hessian eigenvalues (2)


def filter_channels(in_channels: int, sigmas: Sequence[float]) -> int:
    """Number of filter maps for ``in_channels`` input channels and scales ``sigmas``."""
    return len(sigmas) * (in_channels + PER_SCALE_GREY)


def gaussian_kernel(sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A normalized 1-D Gaussian of radius ``ceil(3 sigma)``."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _separable(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of ``x`` with ``kernel`` along rows and columns (reflect pad)."""
    c, r = x.shape[1], kernel.numel() // 2
    k = kernel.to(x.dtype)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                 groups=c)
    return F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                    groups=c)


def _derivatives(g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Central first and second differences of a ``(B, 1, H, W)`` map: dy, dx, dyy, dxx, dxy."""
    p = F.pad(g, (1, 1, 1, 1), mode="replicate")
    c = p[..., 1:-1, 1:-1]
    up, down, left, right = p[..., :-2, 1:-1], p[..., 2:, 1:-1], p[..., 1:-1, :-2], p[..., 1:-1, 2:]
    dy, dx = (down - up) / 2, (right - left) / 2
    dyy, dxx = down - 2 * c + up, right - 2 * c + left
    dxy = (p[..., 2:, 2:] - p[..., 2:, :-2] - p[..., :-2, 2:] + p[..., :-2, :-2]) / 4
    return dy, dx, dyy, dxx, dxy


def filter_bank(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Filter responses ``(B, filter_channels(C, sigmas), H, W)`` of a ``(B, C, H, W)`` tile.

    Derivatives are scale-normalized (times ``sigma`` for first, ``sigma**2`` for second
    order) so that responses of different scales are comparable. Computed in float32 and
    NCHW layout whatever the caller's autocast and memory format (depthwise convolutions with
    tall kernels in bf16 / channels-last take minutes on CPUs).
    """
    with torch.autocast(x.device.type, enabled=False):
        return _filter_bank(x.float().contiguous(), sigmas)


def _filter_bank(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    maps = []
    for sigma in sigmas:
        smooth = _separable(x, gaussian_kernel(float(sigma)))
        dy, dx, dyy, dxx, dxy = _derivatives(smooth.mean(1, keepdim=True))
        s2 = float(sigma) ** 2
        half_trace, root = (dxx + dyy) / 2, torch.sqrt(((dxx - dyy) / 2) ** 2 + dxy ** 2)
        maps += [smooth, float(sigma) * torch.sqrt(dx ** 2 + dy ** 2), s2 * (dxx + dyy),
                 s2 * (half_trace + root), s2 * (half_trace - root)]
    return torch.cat(maps, 1)
