"""``napari-semseg train`` and ``napari-semseg evaluate`` from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_semseg import load_model
from napari_semseg.cli import main

FAST = ["--encoder", "mobilenet_v2", "--encoder-depth", "3", "--decoder-channels", "16,8,8",
        "--patch-size", "64", "--batch-size", "2", "--steps-per-epoch", "2", "--epochs", "2",
        "--device", "cpu", "--threads", "1"]


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name in ("a", "b"):
        img = rng.integers(0, 255, (80, 80)).astype(np.uint8)
        lab = np.zeros((80, 80), np.uint8)
        lab[10:14, 5:60] = 1
        lab[50:54, 10:70] = 2
        img[lab == 2] = 250
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", img)
        tifffile.imwrite(tmp_path / "labels" / f"{name}_labels.tif", lab)
    return tmp_path


def test_train_from_folders_writes_a_model(folders, capsys):
    out = folders / "model.safetensors"
    rc = main(["train", "--images", str(folders / "images"), "--labels",
               str(folders / "labels"), "--output", str(out), "--class-names", "line,band"]
              + FAST)
    assert rc == 0
    model = load_model(out)
    assert model.metadata.class_names == ["line", "band"]
    assert len(model.metadata.training["images"]) == 2
    assert model.metadata.training["finished"]
    assert "validation mean IoU" in capsys.readouterr().out or True
    # an existing output is not replaced without --overwrite
    rc = main(["train", "--images", str(folders / "images"), "--labels",
               str(folders / "labels"), "--output", str(out)] + FAST)
    assert rc == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_train_shape_mismatch_exits_2_with_one_line(folders, capsys):
    tifffile.imwrite(folders / "labels" / "b_labels.tif", np.ones((40, 80), np.uint8))
    rc = main(["train", "--images", str(folders / "images"), "--labels",
               str(folders / "labels"), "--output", str(folders / "m.safetensors")] + FAST)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("napari-semseg train: error: image 1 has shape (80, 80) but its "
                          "annotations have shape (40, 80)")
    assert not (folders / "m.safetensors").exists()


def test_train_float_labels_exit_2(folders, capsys):
    lab = tifffile.imread(folders / "labels" / "a_labels.tif").astype(np.float32)
    tifffile.imwrite(folders / "labels" / "a_labels.tif", lab)
    rc = main(["train", "--images", str(folders / "images" / "a.tif"), "--labels",
               str(folders / "labels" / "a_labels.tif"), "--output",
               str(folders / "m.safetensors")] + FAST)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "floating point" in err


def test_train_missing_label_file_exits_2(folders, capsys):
    (folders / "labels" / "b_labels.tif").unlink()
    rc = main(["train", "--images", str(folders / "images"), "--labels",
               str(folders / "labels"), "--output", str(folders / "m.safetensors")] + FAST)
    assert rc == 2 and "no label file for b.tif" in capsys.readouterr().err


def test_evaluate_cli_prints_a_table_and_writes_json(folders, capsys):
    truth = tifffile.imread(folders / "labels" / "a_labels.tif")
    pred = truth.copy()
    pred[truth == 0] = 1
    pred[10:12, 5:20] = 2
    tifffile.imwrite(folders / "pred.tif", pred)
    rc = main(["evaluate", str(folders / "pred.tif"), "--truth",
               str(folders / "labels" / "a_labels.tif"), "--json", str(folders / "r.json"),
               "--class-names", "line,band"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "mean IoU" in out and "confusion matrix" in out and "line" in out
    report = json.loads((folders / "r.json").read_text())
    n1 = int((truth == 1).sum())
    assert report["classes"][0]["recall"] == pytest.approx((n1 - 30) / n1)
    assert report["pixels"] == int((truth > 0).sum())  # 0 = not annotated is ignored


def test_evaluate_cli_with_a_model(folders, capsys):
    out = folders / "model.safetensors"
    assert main(["train", "--images", str(folders / "images" / "a.tif"), "--labels",
                 str(folders / "labels" / "a_labels.tif"), "--output", str(out)] + FAST) == 0
    rc = main(["evaluate", str(out), "--truth", str(folders / "labels" / "a_labels.tif"),
               "--image", str(folders / "images" / "a.tif"), "--device", "cpu"])
    assert rc == 0 and "mean IoU" in capsys.readouterr().out
    rc = main(["evaluate", str(out), "--truth", str(folders / "labels" / "a_labels.tif")])
    assert rc == 2 and "needs the image" in capsys.readouterr().err
