"""Test-time augmentation: flips/transposes undone exactly, averaged probabilities."""

from __future__ import annotations

import pytest
import torch

from napari_semseg import segment
from napari_semseg.core.errors import SemSegError
from napari_semseg.core.tta import averaged_probabilities, dihedral, undo_dihedral


@pytest.mark.parametrize("k", range(8))
def test_undo_inverts_each_transform_of_a_non_square_tensor(k):
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    y = dihedral(x, k)
    assert y.shape == ((2, 3, 6, 4) if k & 4 else x.shape)
    assert torch.equal(undo_dihedral(y, k), x)


def test_the_eight_transforms_are_distinct():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    outs = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(outs) == 8


def test_average_of_an_orientation_blind_network_equals_one_pass():
    net = torch.nn.Conv2d(2, 3, 1)  # per-pixel: every flip gives the same answer
    x = torch.randn(1, 2, 8, 12)
    with torch.no_grad():
        plain = net(x).softmax(1)
        for n in (1, 2, 5, 8):
            assert torch.allclose(averaged_probabilities(net, x, n), plain, atol=1e-6)


def test_average_is_the_mean_of_the_transformed_predictions():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 3, padding=1)  # sees neighbours: orientation matters
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        ref = torch.stack([undo_dihedral(net(dihedral(x, k)).softmax(1), k) for k in range(4)])
        got = averaged_probabilities(net, x, 4)
        assert torch.allclose(got, ref.mean(0), atol=1e-6)
        assert not torch.allclose(got, ref[0], atol=1e-3)
        assert torch.allclose(got.sum(1), torch.ones(1, 8, 8), atol=1e-5)


@pytest.mark.parametrize("value", [0, 9])
def test_out_of_range_tta_is_one_clear_error(tiny_model, grey_image, value):
    with pytest.raises(SemSegError, match="--tta must be 1"):
        segment(grey_image, tiny_model, device="cpu", tta=value)
