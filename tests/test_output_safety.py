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


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_a_second_run_on_an_output_being_written_is_refused(model_file, image, tmp_path,
                                                            suffix):
    """Two predicts on the same output: the second is refused (one line) while the first
    writes, and the first finishes untouched; no lock is left behind."""
    path, img = image
    out = tmp_path / f"seg{suffix}"
    refused = []

    def second_run(event):
        if not refused:
            with pytest.raises(SemSegError, match="is being written by another run") as info:
                segment(path, model_file, output=out, overwrite=True, tile=96, overlap=32,
                        device="cpu")
            refused.append(str(info.value))
        return True

    result = segment(path, model_file, output=out, tile=96, overlap=32, device="cpu",
                     callback=second_run)
    assert refused and "\n" not in refused[0]
    ref = segment(img, model_file, tile=96, overlap=32, device="cpu")
    np.testing.assert_array_equal(np.asarray(result.labels), ref.labels)
    assert not list(tmp_path.glob("*.lock"))


def test_a_lock_left_by_a_killed_run_is_taken_over(model_file, image, tmp_path):
    import json
    import subprocess
    import sys

    path, _ = image
    out = tmp_path / "seg.zarr"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    import socket

    (tmp_path / "seg.zarr.lock").write_text(json.dumps({"pid": int(dead.stdout),
                                                        "host": socket.gethostname()}))
    segment(path, model_file, output=out, tile=96, overlap=32, device="cpu")
    assert out.exists() and not (tmp_path / "seg.zarr.lock").exists()


def test_a_cancelled_run_releases_its_lock(model_file, image, tmp_path):
    from napari_semseg.core.errors import Cancelled

    path, _ = image
    out = tmp_path / "seg.zarr"
    with pytest.raises(Cancelled):
        segment(path, model_file, output=out, tile=96, overlap=32, device="cpu",
                callback=lambda e: False)
    assert not (tmp_path / "seg.zarr.lock").exists()
    segment(path, model_file, output=out, resume=True, tile=96, overlap=32, device="cpu")
    assert out.exists()


def _disk_full():
    import errno

    return OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_chunks_ends_with_one_line_and_leaves_nothing(
        model_file, image, tmp_path, monkeypatch, capsys):
    from napari_semseg.core.writers import ZarrSink, partial_path

    path, _ = image
    out = tmp_path / "seg.zarr"
    calls = {"n": 0}
    original = ZarrSink.write

    def write(self, chunk):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _disk_full()
        return original(self, chunk)

    monkeypatch.setattr(ZarrSink, "write", write)
    code = main(["predict", str(path), "-m", str(model_file), "-o", str(out), *OPTS])
    errors = [ln for ln in capsys.readouterr().err.replace("\r", "\n").splitlines()
              if "error:" in ln]
    assert code == 2 and len(errors) == 1 and "Traceback" not in errors[0]
    assert "the disk is full" in errors[0] and "nothing incomplete was left" in errors[0]
    assert not out.exists() and not partial_path(out).exists()
    assert not list(tmp_path.glob("seg*"))


def test_a_full_disk_while_writing_the_tiff_leaves_no_companion(model_file, image, tmp_path,
                                                                monkeypatch):
    """The labels file is written last; a full disk then used to leave a complete-looking
    ``..._probabilities.tif`` without labels."""
    import tifffile as tf

    path, _ = image
    out = tmp_path / "seg.tif"
    original = tf.imwrite

    def imwrite(target, *args, **kwargs):
        if str(target).endswith("seg.tif.partial"):  # the labels file, after the companions
            with open(target, "wb") as fh:
                fh.write(b"II*\0")  # half-written
            raise _disk_full()
        return original(target, *args, **kwargs)

    monkeypatch.setattr(tf, "imwrite", imwrite)
    with pytest.raises(SemSegError, match="the disk is full"):
        segment(path, model_file, output=out, probabilities=True, uncertainty=True, tile=96,
                overlap=32, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "x.tif"]
