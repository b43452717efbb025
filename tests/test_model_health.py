"""Warnings for trained models that predict one class or score low (shown by the Train widget)."""

from napari_semseg.core.model_health import missed_classes, training_warnings

NAMES = ["membrane", "interior"]


def test_single_class_model_is_named_with_what_to_paint():
    record = {"best_metrics": {"mean_iou": 0.26, "recall/membrane": 1.0,
                               "recall/interior": 0.0}}
    assert missed_classes(record["best_metrics"], NAMES) == ["interior"]
    (line,) = training_warnings(record, NAMES)
    assert "predicts only 'membrane'" in line and "paint more of class 'interior'" in line
    assert "train longer" in line


def test_low_score_says_train_longer():
    record = {"best_metrics": {"mean_iou": 0.31, "recall/membrane": 0.6,
                               "recall/interior": 0.5}}
    (line,) = training_warnings(record, NAMES)
    assert "0.31" in line and "train longer" in line


def test_sound_model_or_no_validation_gives_no_warning():
    good = {"best_metrics": {"mean_iou": 0.8, "recall/membrane": 0.9, "recall/interior": 0.85}}
    assert training_warnings(good, NAMES) == []
    assert training_warnings({}, NAMES) == []
    assert training_warnings(None, NAMES) == []
    # a class absent from the validation strokes (NaN recall) is not "missed"
    nan = {"best_metrics": {"mean_iou": 0.9, "recall/membrane": 0.9,
                            "recall/interior": float("nan")}}
    assert training_warnings(nan, NAMES) == []
