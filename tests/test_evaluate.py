"""evaluate(): label images or a model on an image against ground truth."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import zarr

from napari_semseg import build_model, evaluate
from napari_semseg.core.errors import SemSegError


def _truth():
    truth = np.ones((40, 50), np.uint8)
    truth[10:30, 10:30] = 2
    truth[:, 45:] = 3
    truth[0:2] = 255  # "void": ignored when asked
    truth[38:] = 0    # not annotated
    return truth


def test_evaluate_label_images_with_ignore_values():
    truth = _truth()
    pred = truth.copy()
    pred[truth == 255] = 1
    pred[truth == 0] = 2
    pred[10:20, 10:30] = 1  # half of class 2 wrong
    report = evaluate(pred, truth, ignore=(0, 255), class_names=["a", "b", "c"])
    n2 = int((truth == 2).sum())
    assert report.pixels == int(((truth > 0) & (truth < 255)).sum())
    assert report.metrics["recall/b"] == pytest.approx(0.5)
    assert report.metrics["precision/b"] == 1.0
    assert report.metrics["iou/c"] == 1.0
    assert report.confusion[2, 1] == n2 // 2
    assert report.confusion[1, 1] == int((truth == 1).sum())
    assert report.confusion[:, 0].sum() == 0  # void/unannotated pixels predicted 1/2 not scored
    d = report.to_dict()
    assert d["mean_iou"] == pytest.approx(report.mean_iou)
    assert [c["class"] for c in d["classes"]] == ["a", "b", "c"]
    assert json.loads(report.to_json())["confusion_matrix"]["values"][1][1] == n2 // 2
    table = report.table()
    assert "mean IoU" in table and "confusion matrix" in table
    # 255 is scored as a class when not ignored (and K grows to 255)
    assert evaluate(pred, truth, ignore=(0,)).confusion.shape[0] == 256


def test_class_absent_from_truth_and_prediction_is_nan_and_left_out():
    truth = _truth()
    report = evaluate(truth, truth, ignore=(0, 255), n_classes=4)
    assert math.isnan(report.metrics["iou/class 4"])
    assert report.mean_iou == 1.0
    assert report.to_dict()["classes"][3]["iou"] is None


def test_evaluate_lazy_arrays_and_files(tmp_path):
    import tifffile

    truth = _truth()
    tifffile.imwrite(tmp_path / "t.tif", truth)
    z = zarr.create_array(tmp_path / "p.zarr", shape=truth.shape, chunks=(16, 16), dtype="u1")
    z[:] = truth
    report = evaluate(str(tmp_path / "p.zarr"), str(tmp_path / "t.tif"), ignore=(0, 255))
    assert report.mean_iou == 1.0


def test_evaluate_a_model_on_an_image():
    import torch

    torch.manual_seed(0)
    model = build_model("unet", "mobilenet_v2", 1, 3, encoder_depth=3,
                        decoder_channels=(8, 8, 8), class_names=["a", "b", "c"])
    truth = _truth()
    image = np.random.default_rng(0).random(truth.shape).astype(np.float32)
    report = evaluate(model, truth, image, ignore=(0, 255), device="cpu")
    from napari_semseg import segment

    labels = segment(image, model, device="cpu").labels
    ref = evaluate(labels, truth, ignore=(0, 255), n_classes=3)
    assert np.array_equal(report.confusion, ref.confusion)
    assert report.class_names == ["a", "b", "c"]


def test_evaluate_errors():
    truth = _truth()
    with pytest.raises(SemSegError, match="prediction has shape"):
        evaluate(truth[:10], truth)
    with pytest.raises(SemSegError, match="integer labels"):
        evaluate(truth.astype(float), truth)
    with pytest.raises(SemSegError, match="nothing to evaluate"):
        evaluate(truth, np.zeros_like(truth))
    model = build_model("unet", "mobilenet_v2", 1, 2, encoder_depth=3, decoder_channels=(8, 8, 8))
    with pytest.raises(SemSegError, match="needs the image"):
        evaluate(model, truth)
