"""Tensor augmentations for training batches; they run wherever the batch lives (CPU or GPU).

Images are normalized float tensors ``(B, C, H, W)``; labels are integer tensors ``(B, H, W)``
with 0 = not annotated. Geometric transforms move images and labels together (labels with
nearest-neighbour sampling, so no new label values appear); intensity transforms touch only
images. The mixing augmentation is CutMix: a box of another sample of the batch is pasted into
the image *and* into the labels, unannotated pixels included, so every annotated pixel of the
result still carries the label of the pixel it shows (correct for sparse labels, unlike MixUp
with one-hot targets).

All randomness comes from a ``torch.Generator`` on the CPU, so a run is reproducible for a seed
whatever the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """Which augmentations run and how strong they are (probabilities per sample)."""

    flips: bool = True            # horizontal/vertical flips and 90-degree rotations
    scale: float = 0.25           # zoom factor drawn log-uniformly in [1/(1+s), 1+s]
    brightness: float = 0.15      # additive shift (normalized units)
    contrast: float = 0.2         # multiplicative factor in [1-c, 1+c] around the mean
    gamma: float = 0.25           # gamma in [1/(1+g), 1+g] on the [0, 1]-rescaled sample
    channel_shift: float = 0.05   # extra per-channel shift (colour jitter) for multichannel
    noise: float = 0.04           # Gaussian noise sigma drawn in [0, noise]
    blur: float = 0.1             # probability of a small Gaussian blur
    cutmix: float = 0.3           # probability that a sample receives a box from another
    intensity_p: float = 0.8      # probability of intensity jitter per sample


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=gen)


def flip_rotate(images: torch.Tensor, labels: torch.Tensor,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal/vertical flips and 90-degree rotations (the 8 symmetries of a square),
    applied per sample to image and labels alike. Patches must be square."""
    b = images.shape[0]
    codes = torch.randint(0, 8, (b,), generator=gen).tolist()
    out_i, out_l = [], []
    for k in range(b):
        img, lab = images[k], labels[k]
        code = codes[k]
        if code & 1:
            img, lab = img.flip(-1), lab.flip(-1)
        if code & 2:
            img, lab = img.flip(-2), lab.flip(-2)
        if code & 4:
            img, lab = img.transpose(-1, -2), lab.transpose(-1, -2)
        out_i.append(img)
        out_l.append(lab)
    return torch.stack(out_i).contiguous(), torch.stack(out_l).contiguous()


def rescale(images: torch.Tensor, labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a batch to ``size`` x ``size`` (bilinear images, nearest labels)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images, labels
    img = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=images.shape[-1] > size)
    lab = F.interpolate(labels[:, None].float(), size=(size, size), mode="nearest")[:, 0]
    return img, lab.to(labels.dtype)


def intensity(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, gamma, per-channel shift, blur and noise, per sample."""
    b, c = images.shape[:2]
    dev = images.device
    if cfg.intensity_p <= 0:
        return images
    apply = (_rand(gen, b) < cfg.intensity_p).float()
    x = images
    # gamma on the per-sample [0, 1] range
    if cfg.gamma > 0:
        g = torch.exp((_rand(gen, b) * 2 - 1) * math.log1p(cfg.gamma))
        g = torch.where(apply > 0, g, torch.ones_like(g)).to(dev).view(b, 1, 1, 1)
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        span = (hi - lo).clamp_min(1e-6)
        x = ((x - lo) / span).clamp(0, 1).pow(g) * span + lo
    mean = x.mean(dim=(2, 3), keepdim=True)
    contrast = 1 + (_rand(gen, b) * 2 - 1) * cfg.contrast * apply
    bright = (_rand(gen, b) * 2 - 1) * cfg.brightness * apply
    x = (x - mean) * contrast.to(dev).view(b, 1, 1, 1) + mean + bright.to(dev).view(b, 1, 1, 1)
    if c > 1 and cfg.channel_shift > 0:
        shift = (_rand(gen, b, c) * 2 - 1) * cfg.channel_shift * apply.view(b, 1)
        x = x + shift.to(dev).view(b, c, 1, 1)
    if cfg.blur > 0:
        blur = (_rand(gen, b) < cfg.blur) & (apply > 0)
        if blur.any():
            k = torch.tensor([0.25, 0.5, 0.25], device=dev, dtype=x.dtype)
            kernel = (k[:, None] * k[None, :]).expand(c, 1, 3, 3)
            blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)
            x = torch.where(blur.to(dev).view(b, 1, 1, 1), blurred, x)
    if cfg.noise > 0:
        sigma = _rand(gen, b) * cfg.noise * apply
        noise = torch.randn(x.shape, generator=gen).to(dev)
        x = x + noise * sigma.to(dev).view(b, 1, 1, 1)
    return x


def cutmix(images: torch.Tensor, labels: torch.Tensor, p: float,
           gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a random box of another sample into image and labels (sparse-label safe).

    Each sample, with probability ``p``, receives a box (a quarter to a half of the patch edge
    per side) cut from the same place of another, randomly chosen sample. Labels are copied
    with the pixels, unannotated pixels (0) included.
    """
    b, _, h, w = images.shape
    if b < 2 or p <= 0:
        return images, labels
    images, labels = images.clone(), labels.clone()
    source_i, source_l = images.clone(), labels.clone()
    chosen = (_rand(gen, b) < p).tolist()
    partners = torch.randint(0, b - 1, (b,), generator=gen).tolist()
    sizes = _rand(gen, b, 2).tolist()
    origins = _rand(gen, b, 2).tolist()
    for k in range(b):
        if not chosen[k]:
            continue
        j = partners[k] + (partners[k] >= k)  # any other sample
        bh = max(1, int(h * (0.25 + 0.25 * sizes[k][0])))
        bw = max(1, int(w * (0.25 + 0.25 * sizes[k][1])))
        y = int((h - bh) * origins[k][0])
        x = int((w - bw) * origins[k][1])
        images[k, :, y:y + bh, x:x + bw] = source_i[j, :, y:y + bh, x:x + bw]
        labels[k, y:y + bh, x:x + bw] = source_l[j, y:y + bh, x:x + bw]
    return images, labels


def augment_batch(images: torch.Tensor, labels: torch.Tensor, cfg: AugmentConfig,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply flips/rotations, intensity jitter and CutMix to a batch.

    Scale jitter is done when the patches are read (a window of ``patch * zoom`` pixels is read
    and resized with :func:`rescale`), so that zooming out shows real context, not padding.
    """
    if cfg.flips and images.shape[-1] == images.shape[-2]:
        images, labels = flip_rotate(images, labels, gen)
    images = intensity(images, cfg, gen)
    images, labels = cutmix(images, labels, cfg.cutmix, gen)
    return images, labels


def draw_zoom(cfg: AugmentConfig, gen: torch.Generator) -> float:
    """A zoom factor for one batch: log-uniform in ``[1/(1+scale), 1+scale]``."""
    if cfg.scale <= 0:
        return 1.0
    r = math.log1p(cfg.scale)
    return float(math.exp((float(_rand(gen, 1)) * 2 - 1) * r))
