"""``napari-semseg demo``: the README's main job on the bundled sample and model."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_semseg.cli import main


def test_demo_segments_the_em_sample(tmp_path, capsys):
    assert main(["demo", "--output-dir", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    labels = tifffile.imread(tmp_path / "em_labels.tif")
    assert labels.shape == (512, 512) and set(np.unique(labels)) <= {1, 2}
    from napari_semseg.sample_data import sample_path

    truth = tifffile.imread(sample_path("em_labels.tif"))
    assert (labels == truth).mean() > 0.85  # the bundled model really segments the held-out slice
    picture = np.asarray(Image.open(tmp_path / "em_overlay.png"))
    assert picture.shape[1] > 3 * 512 and picture.shape[2] == 3
    assert "mean IoU" in out or "mean_iou" in out


def test_demo_refuses_to_overwrite_without_consent(tmp_path, capsys):
    (tmp_path / "em_labels.tif").write_bytes(b"keep me")
    assert main(["demo", "--output-dir", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "em_labels.tif").read_bytes() == b"keep me"


@pytest.mark.slow
def test_demo_trains_from_the_bundled_scribbles(tmp_path, capsys):
    assert main(["demo", "--train", "--time-budget", "60", "--output-dir", str(tmp_path),
                 "--device", "cpu"]) == 0
    assert (tmp_path / "em_trained_model.safetensors").exists()
    from napari_semseg.sample_data import sample_path

    labels = tifffile.imread(tmp_path / "em_labels.tif")
    truth = tifffile.imread(sample_path("em_labels.tif"))
    assert (labels == truth).mean() > 0.75
