"""Confusion matrix and scores."""

from __future__ import annotations

import math

import numpy as np

from napari_semseg.core.metrics import confusion_matrix, mean_iou, scores


def test_confusion_matrix_counts_label_pairs_and_skips_ignored():
    truth = np.array([[1, 1, 2, 2], [0, 255, 2, 1]])
    pred = np.array([[1, 2, 2, 2], [2, 2, 1, 1]])
    cm = confusion_matrix(pred, truth, 2, ignore=(0, 255))
    assert cm.shape == (3, 3)
    assert cm[1, 1] == 2 and cm[1, 2] == 1 and cm[2, 2] == 2 and cm[2, 1] == 1
    assert cm.sum() == 6  # the 0 and the 255 pixel are not counted


def test_predictions_outside_classes_count_as_errors():
    truth = np.array([1, 1, 2, 2])
    pred = np.array([1, 0, 2, 7])
    cm = confusion_matrix(pred, truth, 2)
    assert cm[1, 0] == 1 and cm[2, 0] == 1
    s = scores(cm)
    assert s["accuracy"] == 0.5
    assert s["recall/class 1"] == 0.5
    assert s["precision/class 1"] == 1.0


def test_scores_known_values():
    truth = np.array([1, 1, 1, 2, 2, 2, 2, 2])
    pred = np.array([1, 1, 2, 2, 2, 2, 2, 1])
    s = scores(confusion_matrix(pred, truth, 2), ["a", "b"])
    # class a: tp 2, fp 1, fn 1 -> IoU 2/4, Dice 4/6; class b: tp 4, fp 1, fn 1 -> IoU 4/6
    assert math.isclose(s["iou/a"], 0.5)
    assert math.isclose(s["dice/a"], 4 / 6)
    assert math.isclose(s["iou/b"], 4 / 6)
    assert math.isclose(s["mean_iou"], (0.5 + 4 / 6) / 2)
    assert math.isclose(s["accuracy"], 6 / 8)


def test_absent_class_is_left_out_of_the_mean():
    truth = np.array([1, 1, 2, 2])
    s = scores(confusion_matrix(truth, truth, 3))
    assert math.isnan(s["iou/class 3"])
    assert s["mean_iou"] == 1.0
    assert mean_iou(truth, truth, 3) == 1.0
