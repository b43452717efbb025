"""Uncertainty kinds: exact on hand-made probabilities, and through segment() and the CLI."""

import math

import numpy as np
import pytest
import torch

from napari_semseg import segment
from napari_semseg.core.errors import SemSegError
from napari_semseg.core.prediction.chunks import finish_tensors
from napari_semseg.core.settings import PredictSettings
from napari_semseg.core.uncertainty import (
    disagreement,
    entropy,
    margin,
    probabilities_and_disagreement,
    uncertainty_kind,
)

# three pixels, three classes: certain, two classes tied, uniform
P = torch.tensor([[1.0, 0.5, 1 / 3], [0.0, 0.5, 1 / 3], [0.0, 0.0, 1 / 3]])


def test_margin_is_one_minus_the_gap_of_the_two_best_classes():
    np.testing.assert_allclose(margin(P).numpy(), [0.0, 1.0, 1.0], atol=1e-6)
    p = torch.tensor([[0.7], [0.2], [0.1]])
    assert margin(p).item() == pytest.approx(1 - (0.7 - 0.2))


def test_entropy_is_normalized_by_log_k():
    expected = [0.0, math.log(2) / math.log(3), 1.0]
    np.testing.assert_allclose(entropy(P).numpy(), expected, atol=1e-5)


def test_disagreement_is_zero_for_identical_copies_and_log2_for_opposite_ones():
    same = torch.stack([P, P, P])
    np.testing.assert_allclose(disagreement(same).numpy(), 0.0, atol=1e-6)
    a = torch.tensor([[1.0], [0.0]])
    b = torch.tensor([[0.0], [1.0]])
    # two certain copies that disagree: H(mean) = log 2, mean H(copy) = 0, K = 2 -> 1
    assert disagreement(torch.stack([a, b])).item() == pytest.approx(1.0, abs=1e-5)
    c = torch.tensor([[0.9], [0.1]])
    d = torch.tensor([[0.6], [0.4]])

    def h(p):
        return -sum(x * math.log(x) for x in p) / math.log(2)

    expected = h([0.75, 0.25]) - (h([0.9, 0.1]) + h([0.6, 0.4])) / 2
    assert disagreement(torch.stack([c, d])).item() == pytest.approx(expected, abs=1e-5)


def test_probabilities_and_disagreement_match_the_copies():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4)

    def forward(x):  # "network" whose output depends on orientation: the input itself
        return x

    out = probabilities_and_disagreement(forward, logits, 2)
    copies = torch.stack([logits.softmax(1), logits.flip(-1).softmax(1).flip(-1)])[:, 0]
    np.testing.assert_allclose(out[0, :3].numpy(), copies.mean(0).numpy(), atol=1e-6)
    # the forward is equivariant, so the copies agree exactly
    np.testing.assert_allclose(out[0, 3].numpy(), 0.0, atol=1e-6)

    def biased(x):  # breaks equivariance: adds a left-to-right ramp after the flip
        return x + torch.linspace(-3, 3, x.shape[-1])

    out = probabilities_and_disagreement(biased, logits, 2)
    copies = torch.stack([biased(logits).softmax(1),
                          biased(logits.flip(-1)).softmax(1).flip(-1)])[:, 0]
    np.testing.assert_allclose(out[0, 3].numpy(), disagreement(copies).numpy(), atol=1e-5)


def test_finish_tensors_writes_each_kind_as_uint8():
    acc = P.clone()
    labels, _, unc = finish_tensors(acc.clone(), probabilities=False, uncertainty="margin")
    assert labels.tolist() == [1, 1, 1]
    assert unc.tolist() == [0, 255, 255]
    _, _, unc = finish_tensors(acc.clone(), probabilities=False, uncertainty=True)
    assert unc.tolist() == [0, round(255 * math.log(2) / math.log(3)), 255]
    with_mi = torch.cat([acc, torch.tensor([[0.0, 0.5, 1.0]])])
    labels, probs, unc = finish_tensors(with_mi, probabilities=True, uncertainty="tta")
    assert probs.shape[0] == 3 and unc.tolist() == [0, 128, 255]
    _, _, unc = finish_tensors(acc.clone(), probabilities=False, uncertainty="none")
    assert unc is None


def test_settings_keep_true_meaning_entropy():
    assert PredictSettings(uncertainty=True).uncertainty == "entropy"
    assert PredictSettings(uncertainty=False).uncertainty_kind is None
    assert PredictSettings().uncertainty_kind is None
    assert uncertainty_kind(True) == "entropy" and uncertainty_kind("none") is None
    with pytest.raises(SemSegError, match="--uncertainty must be one of none, entropy"):
        PredictSettings(uncertainty="bald").validated()
    assert PredictSettings(uncertainty="tta").validated().uncertainty_kind == "tta"


def test_segment_writes_the_kind_asked_for(tiny_model, grey_image):
    ref = segment(grey_image, tiny_model, device="cpu", probabilities=True,
                  uncertainty="margin")
    p = ref.probabilities.astype(np.float64) / 255
    top = np.sort(p, axis=0)[::-1]
    assert np.abs(ref.uncertainty / 255 - (1 - (top[0] - top[1]))).max() < 0.02
    ent = segment(grey_image, tiny_model, device="cpu", uncertainty=True)
    assert not np.array_equal(ent.uncertainty, ref.uncertainty)
    np.testing.assert_array_equal(ent.labels, ref.labels)


def test_segment_tta_disagreement(tiny_model, grey_image):
    res = segment(grey_image, tiny_model, device="cpu", tta=4, uncertainty="tta")
    plain = segment(grey_image, tiny_model, device="cpu", tta=4)
    np.testing.assert_array_equal(res.labels, plain.labels)  # the extra channel is not a class
    assert res.uncertainty.dtype == np.uint8 and res.uncertainty.shape == res.labels.shape
    assert res.uncertainty.max() > 0
    # with tta=1 all eight copies are computed for the disagreement
    eight = segment(grey_image, tiny_model, device="cpu", uncertainty="tta")
    np.testing.assert_array_equal(eight.labels,
                                  segment(grey_image, tiny_model, device="cpu", tta=8).labels)


def test_cli_uncertainty_option(tmp_path, tiny_model):
    import tifffile
    import zarr

    from napari_semseg.cli import main
    from napari_semseg.core.models import save_model
    from napari_semseg.core.writers import METADATA_KEY

    model_path = save_model(tiny_model, tmp_path / "m.safetensors")
    image_path = tmp_path / "x.tif"
    tifffile.imwrite(image_path, (np.random.default_rng(0).random((120, 100)) * 255)
                     .astype(np.uint8))
    for kind, args in (("margin", ["--uncertainty", "margin"]), ("entropy", ["--uncertainty"])):
        out = tmp_path / f"{kind}.zarr"
        assert main(["predict", str(image_path), "-m", str(model_path), "-o", str(out),
                     "--tile", "96", "--overlap", "32", "--device", "cpu", *args]) == 0
        root = zarr.open_group(str(out), mode="r")
        assert root["uncertainty/0"].dtype == np.uint8
        assert root.attrs[METADATA_KEY]["settings"]["uncertainty"] == kind
