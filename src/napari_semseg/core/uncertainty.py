"""Per-pixel uncertainty of a prediction, from its class probabilities.

Three kinds, each in [0, 1] (0 = certain), written as uint8 (0..255) next to the labels:

``entropy`` (the default)
    Normalized entropy of the mean probabilities: ``-sum_k p_k log p_k / log K``; 1 when all
    classes are equally likely.
``margin``
    ``1 - (p1 - p2)`` with ``p1 >= p2`` the two largest probabilities (ilastik's overlay,
    PixelPick's choice of pixels): 1 when the two best classes tie, whatever the others do.
``tta``
    Disagreement of the test-time-augmented copies (with ``tta=1``, all 8 copies are computed
    for it, and the labels are those of their mean): the mutual information
    between the prediction and the transform, ``H(mean p) - mean H(p_copy)``, divided by
    ``log K``. It is 0 when every flipped/transposed copy gives the same probabilities (however
    uncertain they are) and grows when the copies disagree (the BALD score, with the eight
    transforms in place of dropout samples). It is computed per tile and blended across tiles
    with the same weights as the probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .settings import UNCERTAINTY_KINDS as KINDS
from .tta import MAX_TTA, dihedral, undo_dihedral

EPS = 1e-7


def uncertainty_kind(value: str | bool | None) -> str | None:
    """The kind asked for: ``True`` means entropy; ``False``, ``None`` and ``"none"`` none."""
    if value is True:
        return "entropy"
    if value in (False, None, "none"):
        return None
    if value not in KINDS:
        raise ValueError(f"uncertainty must be one of {', '.join(KINDS)}, got {value!r}")
    return str(value)


def entropy(p: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Entropy of probabilities along ``dim`` divided by ``log K`` (0 certain, 1 uniform)."""
    k = p.shape[dim]
    if k < 2:
        return torch.zeros_like(p.select(dim, 0))
    q = p.clamp(EPS, 1.0)
    return (q * q.log()).sum(dim=dim).mul_(-1.0 / math.log(k))


def margin(p: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``1 - (p1 - p2)``: one minus the gap between the two largest probabilities."""
    if p.shape[dim] < 2:
        return torch.zeros_like(p.select(dim, 0))
    top = p.topk(2, dim=dim).values
    return 1.0 - (top.select(dim, 0) - top.select(dim, 1))


def disagreement(copies: torch.Tensor) -> torch.Tensor:
    """Mutual information of copies ``(N, K, ...)``: ``H(mean) - mean H(copy)``, over ``log K``."""
    mean = copies.mean(dim=0)
    per_copy = entropy(copies, dim=1).mean(dim=0)
    return (entropy(mean, dim=0) - per_copy).clamp_(min=0.0)


def to_uint8(u: torch.Tensor) -> torch.Tensor:
    """An uncertainty in [0, 1] as uint8 0..255."""
    return u.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def from_probabilities(kind: str, p: torch.Tensor) -> torch.Tensor:
    """Entropy or margin of probabilities ``(K, ...)`` (float, [0, 1])."""
    if kind == "margin":
        return margin(p)
    return entropy(p)


def probabilities_and_disagreement(forward: Callable[[torch.Tensor], torch.Tensor],
                                   x: torch.Tensor, n: int) -> torch.Tensor:
    """Mean softmax probabilities of the first ``n`` dihedral transforms of ``x`` with their
    :func:`disagreement` appended as one more channel: ``(B, K + 1, H, W)`` float32.

    Like :func:`~napari_semseg.core.tta.averaged_probabilities`, but it keeps a running sum of
    ``p log p`` per copy rather than the copies, so memory does not grow with ``n``.
    """
    count = max(1, min(int(n), MAX_TTA))
    total = None
    neg_entropy = None
    for k in range(count):
        p = forward(x if k == 0 else dihedral(x, k)).float().softmax(dim=1)
        if k:
            p = undo_dihedral(p, k)
        q = p.clamp(EPS, 1.0)
        plogp = (q * q.log()).sum(dim=1, keepdim=True)
        total = p if total is None else total.add_(p)
        neg_entropy = plogp if neg_entropy is None else neg_entropy.add_(plogp)
    assert total is not None and neg_entropy is not None  # count >= 1 copies were added
    mean = total.div_(count)
    k_classes = mean.shape[1]
    if k_classes < 2:
        return torch.cat([mean, torch.zeros_like(mean[:, :1])], dim=1)
    mean_copy_entropy = neg_entropy.div_(-count * math.log(k_classes))
    mi = (entropy(mean, dim=1).unsqueeze(1) - mean_copy_entropy).clamp_(min=0.0)
    return torch.cat([mean, mi], dim=1)
