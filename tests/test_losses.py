"""Losses on annotated pixels only."""

from __future__ import annotations

import pytest
import torch

from napari_semseg.core.losses import (SparseLoss, class_weights, partial_cross_entropy,
                                       partial_dice, partial_focal)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, 1:3, 1:5] = 1
    labels[1, 4:6, 2:4] = 3
    labels[0, 6, 6] = 2
    return logits, labels


@pytest.mark.parametrize("loss", [partial_cross_entropy, partial_dice, partial_focal,
                                  SparseLoss("ce+dice"), SparseLoss("focal+dice")])
def test_unannotated_pixels_do_not_matter(loss):
    logits, labels = _batch()
    changed = logits.clone()
    changed[labels[:, None].expand_as(logits) == 0] = 50.0  # garbage where nothing is painted
    assert torch.allclose(loss(logits, labels), loss(changed, labels), atol=1e-6)


def test_cross_entropy_matches_torch_on_annotated_pixels():
    logits, labels = _batch()
    mask = labels > 0
    ref = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[mask], labels[mask] - 1)
    assert torch.allclose(partial_cross_entropy(logits, labels), ref)


def test_perfect_prediction_has_low_loss_and_gradient_flows():
    _, labels = _batch()
    perfect = torch.nn.functional.one_hot((labels - 1).clamp_min(0), 3).permute(0, 3, 1, 2) * 20.0
    perfect.requires_grad_(True)
    loss = SparseLoss("ce+dice")(perfect.float(), labels)
    assert loss.item() < 1e-3
    logits, _ = _batch(1)
    logits.requires_grad_(True)
    SparseLoss("ce+dice")(logits, labels).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_no_annotation_gives_zero_loss():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    assert SparseLoss("ce+dice")(logits, labels).item() == 0.0


def test_class_weights_favour_rare_classes():
    w = class_weights([1000, 10, 0])
    assert w[1] > w[0] > 0 and w[2] == 0
    assert torch.isclose(w[:2].mean(), torch.tensor(1.0))
    assert w[1] / w[0] <= 10.0 + 1e-6


def test_unknown_loss_is_rejected():
    with pytest.raises(ValueError, match="unknown loss"):
        SparseLoss("hinge")
