"""Outputs never destroy inputs, never replace a user's file without --overwrite, never collide.

Each case is refused before any work with one line (CLI: exit 2) and leaves every file as it was.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
import zarr

from napari_semseg import save_model, segment
from napari_semseg.cli import main
from napari_semseg.core.errors import SemSegError
from napari_semseg.core.normalize import Normalization

OPTS = ["--tile", "96", "--overlap", "32", "--device", "cpu"]


@pytest.fixture
def model_file(tmp_path, tiny_model):
    tiny_model.metadata.normalization = Normalization("meanstd", [127.0], [1 / 70.0])
    return save_model(tiny_model, tmp_path / "model.safetensors")


@pytest.fixture
def image(tmp_path):
    img = (np.random.default_rng(0).random((120, 110)) * 255).astype(np.uint8)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, img)
    return path, img


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def test_output_equal_to_input_is_refused_even_with_overwrite(tmp_path, model_file, image, capsys):
    path, img = image
    code = main(["predict", str(path), "-m", str(model_file), "-o", str(path), "--overwrite",
                 *OPTS])
    assert code == 2
    assert "input" in _one_line_error(capsys)
    np.testing.assert_array_equal(tifffile.imread(path), img)


def test_output_through_a_link_to_the_input_is_refused(tmp_path, model_file, image, capsys):
    path, img = image
    link = tmp_path / "link.tif"
    os.symlink(path, link)
    code = main(["predict", str(path), "-m", str(model_file), "-o", str(link), "--overwrite",
                 *OPTS])
    assert code == 2
    _one_line_error(capsys)
    np.testing.assert_array_equal(tifffile.imread(path), img)


def test_zarr_input_is_never_the_output(tmp_path, model_file, image):
    _, img = image
    store = tmp_path / "in.zarr"
    zarr.create_array(str(store), shape=img.shape, dtype=img.dtype, chunks=(64, 64))[:] = img
    for out in (store, store / "labels.zarr"):
        with pytest.raises(SemSegError, match="input") as info:
            segment(str(store), model_file, output=out, overwrite=True, tile=96, overlap=32)
        assert "\n" not in str(info.value)
    np.testing.assert_array_equal(zarr.open_array(str(store), mode="r")[:], img)


def test_existing_sidecar_is_not_replaced_without_overwrite(tmp_path, model_file, image, capsys):
    path, _ = image
    sidecar = tmp_path / "res_probabilities.tif"
    sidecar.write_bytes(b"user data")
    code = main(["predict", str(path), "-m", str(model_file), "-o", str(tmp_path / "res.tif"),
                 "--probabilities", *OPTS])
    assert code == 2
    assert "res_probabilities.tif" in _one_line_error(capsys)
    assert sidecar.read_bytes() == b"user data"
    assert not (tmp_path / "res.tif").exists()
    # with --overwrite the user consents: both are written
    assert main(["predict", str(path), "-m", str(model_file), "-o", str(tmp_path / "res.tif"),
                 "--probabilities", "--overwrite", *OPTS]) == 0
    assert tifffile.imread(sidecar).ndim == 3


def test_two_inputs_with_one_name_are_refused_before_any_work(tmp_path, model_file, image,
                                                              capsys):
    path, img = image
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        tifffile.imwrite(tmp_path / sub / "em.tif", img)
    out = tmp_path / "out"
    code = main(["predict", str(tmp_path / "a" / "em.tif"), str(tmp_path / "b" / "em.tif"),
                 "-m", str(model_file), "-o", str(out), "--overwrite", *OPTS])
    assert code == 2
    assert "both" in _one_line_error(capsys)
    assert not any(out.iterdir()) if out.exists() else True
