"""Losses on annotated pixels only (labels 0 = not annotated are ignored).

``labels`` are ``(B, H, W)`` integer tensors holding 0 (ignored) or classes 1..K; ``logits`` are
``(B, K, H, W)``. Every term is averaged over annotated pixels only, so a batch of sparse strokes
and a batch of dense masks give losses on the same scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def class_weights(counts: Sequence[int] | np.ndarray | torch.Tensor, power: float = 0.5,
                  max_ratio: float = 10.0) -> torch.Tensor:
    """Inverse-frequency class weights ``(K,)`` with mean 1 over the annotated classes.

    ``weight_k ∝ (1 / frequency_k) ** power``; classes with no annotated pixel get weight 0 and
    no weight exceeds ``max_ratio`` times the smallest non-zero one.
    """
    c = torch.as_tensor(counts, dtype=torch.float64)
    present = c > 0
    w = torch.zeros_like(c)
    if not present.any():
        return torch.ones_like(c).float()
    freq = c[present] / c[present].sum()
    wp = freq.pow(-power)
    wp = wp.clamp(max=wp.min() * max_ratio)
    w[present] = wp / wp.mean()
    return w.float()


def partial_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                          weight: torch.Tensor | None = None,
                          label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy over pixels with a label (``labels > 0``); 0 when none is annotated."""
    target = labels.long() - 1  # 0 -> -1 = ignored
    if not (target >= 0).any():
        return logits.sum() * 0.0
    if weight is not None:
        weight = weight.to(logits.device, logits.dtype)
    return F.cross_entropy(logits, target, weight=weight, ignore_index=-1,
                           label_smoothing=label_smoothing)


def partial_focal(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss (Lin et al. 2017) over annotated pixels."""
    target = labels.long() - 1
    mask = target >= 0
    if not mask.any():
        return logits.sum() * 0.0
    logp = F.log_softmax(logits.float(), dim=1)
    t = target.clamp_min(0)
    logpt = logp.gather(1, t[:, None])[:, 0]
    loss = -(1 - logpt.exp()).pow(gamma) * logpt
    if weight is not None:
        loss = loss * weight.to(logits.device)[t]
    return loss[mask].mean()


def partial_dice(logits: torch.Tensor, labels: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss computed on annotated pixels only, averaged over the classes annotated in
    the batch (1 - mean Dice)."""
    k = logits.shape[1]
    mask = labels > 0
    if not mask.any():
        return logits.sum() * 0.0
    probs = logits.float().softmax(dim=1)
    probs = probs.permute(1, 0, 2, 3)[:, mask]          # (K, n annotated)
    onehot = F.one_hot(labels[mask].long() - 1, k).T.float()  # (K, n)
    inter = (probs * onehot).sum(1)
    denom = probs.sum(1) + onehot.sum(1)
    present = onehot.sum(1) > 0
    dice = (2 * inter + eps) / (denom + eps)
    return 1 - dice[present].mean()


AFFINITY_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1), (0, 2), (2, 0), (2, 2), (2, -2))


def affinity_loss(logits: torch.Tensor, images: torch.Tensor, sigma: float = 0.15,
                  downsample: int = 2) -> torch.Tensor:
    """Local colour-affinity (CRF-like) loss on *all* pixels, annotated or not.

    Neighbouring pixels that look alike should get the same class: for pixel pairs ``(i, j)``
    at the offsets :data:`AFFINITY_OFFSETS` (after ``downsample``-fold average pooling),
    ``w_ij = exp(-|x_i - x_j|^2 / (2 sigma^2 C))`` and the loss is the weighted mean of
    ``1 - p_i . p_j``. Class boundaries are thereby pulled onto image edges, which sparse
    strokes alone leave undetermined (Tang et al. 2018, "On regularized losses for
    weakly-supervised CNN segmentation"; Obukhov et al. 2019, "Gated CRF loss").
    """
    probs = logits.float().softmax(dim=1)
    x = images.float()
    if downsample > 1:
        probs = F.avg_pool2d(probs, downsample)
        x = F.avg_pool2d(x, downsample)
    c = x.shape[1]
    total = probs.new_zeros(())
    norm = probs.new_zeros(())
    h, w = x.shape[-2:]
    for dy, dx in AFFINITY_OFFSETS:
        ys_a, ys_b = slice(0, h - dy), slice(dy, h)
        if dx >= 0:
            xs_a, xs_b = slice(0, w - dx), slice(dx, w)
        else:
            xs_a, xs_b = slice(-dx, w), slice(0, w + dx)
        diff = (x[..., ys_a, xs_a] - x[..., ys_b, xs_b]).pow(2).sum(1)
        wgt = torch.exp(-diff / (2 * sigma * sigma * c)).detach()
        agree = (probs[..., ys_a, xs_a] * probs[..., ys_b, xs_b]).sum(1)
        total = total + (wgt * (1 - agree)).sum()
        norm = norm + wgt.sum()
    return total / norm.clamp_min(1e-6)


class SparseLoss:
    """Cross-entropy (or focal) plus ``dice_weight`` x Dice on annotated pixels, plus
    ``affinity_weight`` x :func:`affinity_loss` on all pixels (needs the images).

    Parameters
    ----------
    kind
        ``"ce"``, ``"ce+dice"``, ``"focal"`` or ``"focal+dice"``.
    weight
        Optional class weights ``(K,)`` (see :func:`class_weights`).
    dice_weight
        Weight of the Dice term when ``kind`` includes it.
    """

    def __init__(self, kind: str = "ce+dice", weight: torch.Tensor | None = None,
                 dice_weight: float = 0.5, label_smoothing: float = 0.0,
                 affinity_weight: float = 0.0, affinity_sigma: float = 0.15) -> None:
        parts = kind.split("+")
        if parts[0] not in ("ce", "focal") or any(p != "dice" for p in parts[1:]):
            raise ValueError(f"unknown loss '{kind}'; use ce, ce+dice, focal or focal+dice")
        self.kind, self.weight = kind, weight
        self.dice_weight = dice_weight if "dice" in parts[1:] else 0.0
        self.label_smoothing = label_smoothing
        self.affinity_weight, self.affinity_sigma = affinity_weight, affinity_sigma

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor,
                 images: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind.startswith("focal"):
            loss = partial_focal(logits, labels, weight=self.weight)
        else:
            loss = partial_cross_entropy(logits, labels, self.weight, self.label_smoothing)
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * partial_dice(logits, labels)
        if self.affinity_weight > 0 and images is not None:
            loss = loss + self.affinity_weight * affinity_loss(logits, images,
                                                               self.affinity_sigma)
        return loss
