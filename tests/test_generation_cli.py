"""``napari-semseg train-generator`` and ``napari-semseg synthesize`` from the command line."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_semseg import read_generator_metadata
from napari_semseg.cli import main

FAST = ["--steps", "2", "--steps-per-epoch", "2", "--crop-size", "32", "--batch-size", "2",
        "--base-channels", "4", "--depth", "3", "--device", "cpu", "--threads", "1"]


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    lab = np.kron(rng.integers(1, 3, (9, 9)), np.ones((8, 8), np.uint8))[:70, :70]
    img = (np.where(lab == 1, 60, 200) + rng.integers(0, 20, lab.shape)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "images" / "a.tif", img)
    tifffile.imwrite(tmp_path / "labels" / "a_labels.tif", lab.astype(np.uint8))
    return tmp_path


@pytest.fixture
def generator_file(pair):
    out = pair / "gen.safetensors"
    rc = main(["train-generator", "--images", str(pair / "images"), "--labels",
               str(pair / "labels"), "--output", str(out), "--class-names", "dark,bright"]
              + FAST)
    assert rc == 0
    return out


def test_train_generator_then_synthesize(pair, generator_file, capsys):
    meta = read_generator_metadata(generator_file)
    assert meta.class_names == ["dark", "bright"] and meta.training["steps"] == 2
    labels = pair / "labels" / "a_labels.tif"
    for seed in ("1", "2"):
        rc = main(["synthesize", str(labels), "--generator", str(generator_file), "--output",
                   str(pair / f"gen{seed}.tif"), "--seed", seed, "--device", "cpu"])
        assert rc == 0
    one, two = (tifffile.imread(pair / f"gen{s}.tif") for s in "12")
    assert one.shape == (70, 70) and one.dtype == np.uint8
    assert not np.array_equal(one, two)
    assert "gen2.tif: 70x70 uint8, seed 2" in capsys.readouterr().out


def test_bad_input_is_one_line_before_any_work(pair, generator_file, tiny_model, capsys):
    from napari_semseg import save_model

    segmenter = save_model(tiny_model, pair / "seg.safetensors")
    labels = pair / "labels" / "a_labels.tif"
    tifffile.imwrite(pair / "big.tif", np.full((20, 20), 7, np.uint8))
    cases = [
        (["synthesize", str(labels), "-g", str(segmenter), "-o", str(pair / "x.tif")],
         "is a segmentation model, not a generator"),
        (["synthesize", str(pair / "big.tif"), "-g", str(generator_file), "-o",
          str(pair / "x.tif")], "uses class 7 but the generator knows classes 1..2"),
        (["synthesize", str(pair / "images" / "a.tif"), "-g", str(generator_file), "-o",
          str(pair / "x.tif"), "--tile", "4"], "minimum"),
        (["predict", str(pair / "images" / "a.tif"), "-m", str(generator_file), "-o",
          str(pair / "x.tif")], "not a segmentation model"),
        (["train-generator", "-i", str(pair / "images" / "a.tif"), "-l",
          str(pair / "big.tif"), "-o", str(pair / "g2.safetensors")] + FAST,
         "same pixels"),
        (["train-generator", "-i", str(pair / "images"), "-l", str(pair / "labels"), "-o",
          str(generator_file)] + FAST, "exists; pass --overwrite"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (pair / "x.tif").exists() and not (pair / "g2.safetensors").exists()
