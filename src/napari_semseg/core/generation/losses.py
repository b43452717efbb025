"""Losses of conditional GAN training (OASIS-style, plus a low-pass reconstruction term).

The discriminator segments images into ``K + 1`` classes: 0 = generated, 1..K = real pixels of
that class. Its loss is a class-balanced cross-entropy: real pixels towards their class (label 0
= not annotated is ignored), generated pixels towards 0. The generator's adversarial loss asks
the discriminator to see each generated pixel as a real pixel of its class; where the
generator's input was unconstrained (0), as a real pixel of *any* class.

The reconstruction term compares generated and real images averaged over ``pool`` x ``pool``
cells (only cells whose labels the generator saw): it fixes the colours of the classes early
without asking for the real image's exact texture, which the adversarial loss provides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def balanced_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Per-pixel weights ``(B, H, W)``: inverse class frequency in the batch, mean 1 over the
    annotated pixels; 0 where the label is 0."""
    counts = torch.bincount(labels.reshape(-1), minlength=classes + 1).float()
    counts[0] = 0
    present = counts > 0
    per_class = torch.zeros_like(counts)
    per_class[present] = counts[present].sum() / (counts[present] * present.sum())
    return per_class[labels]


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                       labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the ``K + 1``-class discriminator on real and generated pixels."""
    classes = real_logits.shape[1] - 1
    w = balanced_weights(labels, classes)
    real = F.cross_entropy(real_logits.float(), labels, reduction="none")
    real = (real * w).sum() / w.sum().clamp(min=1.0)
    fake = F.cross_entropy(fake_logits.float(), torch.zeros_like(labels))
    return real + fake


def generator_adversarial_loss(fake_logits: torch.Tensor, labels: torch.Tensor,
                               sparse: torch.Tensor) -> torch.Tensor:
    """Generated pixels should look real: of their class where the generator saw it, of any
    real class where its input was 0."""
    logits = fake_logits.float()
    classes = logits.shape[1] - 1
    known = sparse > 0
    w = balanced_weights(torch.where(known, labels, torch.zeros_like(labels)), classes)
    ce = F.cross_entropy(logits, labels, reduction="none")
    # -log P(real of any class) = logsumexp(all) - logsumexp(real classes)
    any_real = torch.logsumexp(logits, 1) - torch.logsumexp(logits[:, 1:], 1)
    n = known.numel()
    return ((ce * w).sum() + any_real[~known].sum()) / n


def reconstruction_loss(fake: torch.Tensor, real: torch.Tensor, sparse: torch.Tensor,
                        pool: int = 8) -> torch.Tensor:
    """L1 between ``pool``-averaged generated and real images, over cells whose labels the
    generator saw completely."""
    seen = F.avg_pool2d((sparse > 0).float().unsqueeze(1), pool) > 0.999
    diff = (F.avg_pool2d(fake.float(), pool) - F.avg_pool2d(real.float(), pool)).abs()
    mask = seen.expand_as(diff).float()
    return (diff * mask).sum() / mask.sum().clamp(min=1.0)
