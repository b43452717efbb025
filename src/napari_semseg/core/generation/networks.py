"""Networks of conditional image generation: a slim U-Net generator and an OASIS-style
segmentation discriminator.

The generator maps a one-hot label map (all zeros where the map is 0 = unconstrained) plus
position-determined noise channels to an image in ``[-1, 1]``. Everything in it is tile-safe:
convolutions, average pooling aligned to its stride, nearest upsampling and a *pointwise*
feature normalization (:class:`PixelNorm`; no batch or instance statistics), so a tile computes
what a whole-map pass computes, except within the receptive field of the tile's edge, which the
tiled engine blends away. The label map is fed again at every decoder scale (as SPADE does), so
the class layout survives to the output.

The discriminator (Schönfeld et al. 2021, OASIS) is a slim U-Net segmenter with ``K + 1``
outputs: real pixels are to be classified as their class, generated pixels as class 0 ("fake").
Its loss gives the generator a per-pixel semantic signal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PixelNorm(nn.Module):
    """Normalize each pixel's feature vector to unit root-mean-square (pointwise)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


def conv_block(cin: int, cout: int, *, norm: bool, spectral: bool = False,
               convs: int = 2) -> nn.Sequential:
    """``convs`` 3x3 convolutions, each followed by (pixel norm and) LeakyReLU(0.2)."""
    layers: list[nn.Module] = []
    for a, b in [(cin, cout)] + [(cout, cout)] * (convs - 1):
        conv = nn.Conv2d(a, b, 3, padding=1)
        layers.append(nn.utils.parametrizations.spectral_norm(conv) if spectral else conv)
        if norm:
            layers.append(PixelNorm())
        layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def widths(base: int, depth: int) -> list[int]:
    """Channel widths per level: ``base`` doubling per level, at most ``8 * base``."""
    return [base * min(2**level, 8) for level in range(depth)]


class UNetGenerator(nn.Module):
    """Label map + noise -> image: a U-Net with the label map injected at every decoder scale.

    Each decoder level halves the channels of the coarser level (1x1), upsamples (nearest),
    concatenates the encoder's skip and the label map at that scale, and applies one 3x3
    convolution (slim: the full-resolution levels dominate the cost).

    Parameters
    ----------
    classes
        Number of classes K (input channels 1..K of the one-hot map).
    noise_channels
        Number of noise channels appended to the input.
    out_channels
        Image channels produced (1 greyscale, 3 RGB, ...).
    base, depth
        Width of the first level and number of levels (stride ``2 ** (depth - 1)``).
    """

    def __init__(self, classes: int, noise_channels: int, out_channels: int, base: int = 16,
                 depth: int = 4) -> None:
        super().__init__()
        self.classes, self.depth = classes, depth
        w = widths(base, depth)
        self.encoder = nn.ModuleList(
            conv_block(classes + noise_channels if i == 0 else w[i - 1], w[i], norm=True)
            for i in range(depth))
        self.reduce = nn.ModuleList(nn.Conv2d(w[i + 1], w[i], 1) for i in range(depth - 1))
        self.decoder = nn.ModuleList(
            conv_block(2 * w[i] + classes, w[i], norm=True, convs=1) for i in range(depth - 1))
        self.head = nn.Conv2d(w[0], out_channels, 1)

    @property
    def stride(self) -> int:
        return 2 ** (self.depth - 1)

    def forward(self, onehot: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        x = torch.cat([onehot, noise], dim=1)
        skips, maps = [], [onehot]
        for i, block in enumerate(self.encoder):
            if i:
                x = F.avg_pool2d(x, 2)
                maps.append(F.avg_pool2d(maps[-1], 2))
            x = block(x)
            skips.append(x)
        for i in reversed(range(self.depth - 1)):
            x = F.interpolate(self.reduce[i](x), scale_factor=2.0, mode="nearest")
            x = self.decoder[i](torch.cat([x, skips[i], maps[i]], dim=1))
        return torch.tanh(self.head(x))


class SegmentationDiscriminator(nn.Module):
    """Image -> ``K + 1`` logits per pixel (0 = generated, 1..K = real of that class); a slim
    U-Net with spectral normalization (OASIS) and one convolution per decoder level."""

    def __init__(self, in_channels: int, classes: int, base: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.depth = depth
        w = widths(base, depth)
        self.encoder = nn.ModuleList(
            conv_block(in_channels if i == 0 else w[i - 1], w[i], norm=False, spectral=True)
            for i in range(depth))
        self.reduce = nn.ModuleList(nn.Conv2d(w[i + 1], w[i], 1) for i in range(depth - 1))
        self.decoder = nn.ModuleList(
            conv_block(2 * w[i], w[i], norm=False, spectral=True, convs=1)
            for i in range(depth - 1))
        self.head = nn.Conv2d(w[0], classes + 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x, skips = image, []
        for i, block in enumerate(self.encoder):
            if i:
                x = F.avg_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for i in reversed(range(self.depth - 1)):
            x = F.interpolate(self.reduce[i](x), scale_factor=2.0, mode="nearest")
            x = self.decoder[i](torch.cat([x, skips[i]], dim=1))
        return self.head(x)
