"""Render label maps over images as RGB pictures (for reports, the demo and the README)."""

from __future__ import annotations

import numpy as np


def _hex(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """A 2D grey or ``(Y, X, 3/4)`` image as uint8 RGB, stretched to its 0.5-99.5 percentiles."""
    img = np.asarray(image, np.float32)
    if img.ndim == 3:
        img = img[..., :3]
    lo, hi = np.percentile(img, (0.5, 99.5))
    img = np.clip((img - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img


def overlay(image: np.ndarray, labels: np.ndarray, colors: list[str], alpha: float = 0.45) -> np.ndarray:
    """Blend class colours (class k uses ``colors[k - 1]``; 0 stays transparent) over an image."""
    rgb = to_rgb8(image).astype(np.float32)
    lut = np.zeros((max(len(colors), int(labels.max(initial=0))) + 1, 3), np.float32)
    for k, c in enumerate(colors, start=1):
        lut[k] = _hex(c)
    painted = lut[labels]
    mask = (labels > 0)[..., None]
    out = np.where(mask, (1 - alpha) * rgb + alpha * painted, rgb)
    return out.astype(np.uint8)


def panels(images: list[np.ndarray], captions: list[str], gap: int = 8) -> np.ndarray:
    """Place RGB images side by side with a caption above each."""
    from PIL import Image, ImageDraw

    h = max(im.shape[0] for im in images)
    w = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    top = 22
    canvas = Image.new("RGB", (w, h + top), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for im, cap in zip(images, captions, strict=True):
        canvas.paste(Image.fromarray(im), (x, top))
        draw.text((x + 4, 4), cap, fill="black")
        x += im.shape[1] + gap
    return np.asarray(canvas)
