"""Bad input to prediction: one clear line, exit code 2, nothing written (API and CLI)."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_semseg import save_model, segment
from napari_semseg.cli import main
from napari_semseg.core.errors import SemSegError


@pytest.fixture
def model_file(tmp_path, tiny_model):
    return save_model(tiny_model, tmp_path / "model.safetensors")


@pytest.fixture
def good_tif(tmp_path, grey_image):
    path = tmp_path / "image.tif"
    tifffile.imwrite(path, grey_image)
    return path


def run_cli(capsys, *args):
    code = main(["predict", *map(str, args)])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_clean_failure(capsys, tmp_path, args, pattern):
    out = tmp_path / "out.zarr"
    code, err = run_cli(capsys, *args, "--output", out)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    assert pattern in lines[0], lines[0]
    assert not out.exists() and not out.with_name("out.zarr.partial").exists()


def test_missing_input(capsys, tmp_path, model_file):
    assert_clean_failure(capsys, tmp_path, [tmp_path / "nope.tif", "--model", model_file],
                         "does not exist")
    with pytest.raises(SemSegError, match="does not exist"):
        segment(tmp_path / "nope.tif", model_file)


def test_corrupt_tiff(capsys, tmp_path, model_file):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\x13" * 200)
    assert_clean_failure(capsys, tmp_path, [bad, "--model", model_file], "not a valid TIFF")


def test_non_image_file(capsys, tmp_path, model_file):
    txt = tmp_path / "notes.csv"
    txt.write_text("a,b\n1,2\n")
    assert_clean_failure(capsys, tmp_path, [txt, "--model", model_file], "unsupported format")
    fake_png = tmp_path / "fake.png"
    fake_png.write_text("this is text")
    assert_clean_failure(capsys, tmp_path, [fake_png, "--model", model_file], "not a valid image")


def test_channel_count_mismatch(capsys, tmp_path, model_file):
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    assert_clean_failure(capsys, tmp_path, [rgb, "--model", model_file],
                         "has 3 channel(s)")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_pixels(capsys, tmp_path, model_file, value):
    img = np.ones((64, 64), np.float32)
    img[10, 10] = value
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, img)
    assert_clean_failure(capsys, tmp_path, [path, "--model", model_file], "NaN or infinite")


@pytest.mark.parametrize("shape,pattern", [((0, 10), "empty"), ((1, 1), "at least 2x2"),
                                           ((1, 500), "at least 2x2")])
def test_empty_or_one_pixel_image(capsys, tmp_path, model_file, shape, pattern):
    path = tmp_path / "tiny.npy"
    np.save(path, np.zeros(shape, np.uint8))
    assert_clean_failure(capsys, tmp_path, [path, "--model", model_file], pattern)


def test_tile_smaller_than_network_minimum(capsys, tmp_path, model_file, good_tif):
    assert_clean_failure(capsys, tmp_path, [good_tif, "--model", model_file, "--tile", "8"],
                         "smaller than this network's minimum")


@pytest.mark.parametrize("value", ["0", "9"])
def test_tta_out_of_range(capsys, tmp_path, model_file, good_tif, value):
    assert_clean_failure(capsys, tmp_path, [good_tif, "--model", model_file, "--tta", value],
                         "--tta must be 1 (off) to 8")


def test_output_exists_is_refused_then_overwritten_with_consent(capsys, tmp_path, model_file,
                                                                good_tif):
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious")
    code, err = run_cli(capsys, good_tif, "--model", model_file, "--output", out)
    assert code == 2 and "exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    code, err = run_cli(capsys, good_tif, "--model", model_file, "--output", out, "--overwrite")
    assert code == 0, err
    assert tifffile.imread(out).shape == (150, 170)


def test_model_file_that_is_a_pickle(capsys, tmp_path, good_tif):
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    assert_clean_failure(capsys, tmp_path, [good_tif, "--model", fake], "not a napari-semseg model")


def test_model_file_missing(capsys, tmp_path, good_tif):
    assert_clean_failure(capsys, tmp_path, [good_tif, "--model", tmp_path / "none.safetensors"],
                         "does not exist")


def test_unknown_output_format(capsys, tmp_path, model_file, good_tif):
    code = main(["predict", str(good_tif), "--model", str(model_file), "--output",
                 str(tmp_path / "out.h5")])
    err = capsys.readouterr().err
    assert code == 2 and "must end in .zarr" in err


def test_console_script_prints_one_line(tmp_path, model_file):
    proc = subprocess.run([sys.executable, "-m", "napari_semseg", "predict", str(tmp_path / "x.tif"),
                           "--model", str(model_file), "--output", str(tmp_path / "o.zarr")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr


@pytest.mark.parametrize("option,value,pattern", [
    ("overlap", 0.25, "--overlap must be a whole number, got 0.25"),  # was silently 0 (seams)
    ("tta", 2.5, "--tta must be a whole number, got 2.5"),
    ("tile", "big", "--tile must be a whole number, got 'big'"),
    ("device", 0, "--device must be text such as 'auto'"),
    ("batch_size", True, "--batch-size must be a whole number, got True"),
    ("pixel_size", "0.5", "--pixel-size must be a number"),
])
def test_options_of_the_wrong_type_are_refused_through_the_api(tiny_model, grey_image, option,
                                                               value, pattern):
    with pytest.raises(SemSegError, match=pattern) as info:
        segment(grey_image, tiny_model, **{option: value})
    assert "\n" not in str(info.value)


def test_a_tile_far_larger_than_the_image_is_not_allocated(tiny_model, grey_image):
    """``--tile 100000`` on a small image asked for 80 GB; one image-sized tile does the job."""
    huge = segment(grey_image, tiny_model, tile=100_000, overlap=32)
    normal = segment(grey_image, tiny_model, tile=max(grey_image.shape) + 64, overlap=32)
    assert huge.labels.shape == grey_image.shape
    np.testing.assert_array_equal(huge.labels, normal.labels)


def _uint8_model():
    import torch

    from napari_semseg import build_model
    from napari_semseg.core.normalize import Normalization

    torch.manual_seed(0)
    return build_model("unet", "resnet18", in_channels=1, classes=2, encoder_depth=3,
                       decoder_channels=(16, 8, 8), encoder_weights=None,
                       normalization=Normalization("meanstd", [127.0], [1 / 70.0]))


@pytest.mark.parametrize("kind", ["float 0-1", "uint16", "bool"])
def test_an_input_unlike_the_training_data_gets_a_warning_with_numbers(kind):
    """Issue 15: uint16, float 0-1 or bool images given to a uint8 model came out one class,
    with no word. The run goes on, with one warning naming the values and the fix."""
    from napari_semseg.core.errors import SemSegWarning

    rng = np.random.default_rng(0)
    image = {"float 0-1": rng.random((128, 128)).astype(np.float32),
             "uint16": rng.integers(0, 4096, (128, 128)).astype(np.uint16),
             "bool": rng.random((128, 128)) > 0.5}[kind]
    with pytest.warns(SemSegWarning, match="looks unlike the model's training data: its values "
                                           r".* the model expects \(about"):
        result = segment(image, _uint8_model(), tile=128, overlap=32)
    assert result.labels.shape == image.shape


def test_an_input_like_the_training_data_gets_no_warning(grey_image):
    import warnings

    from napari_semseg.core.errors import SemSegWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", SemSegWarning)
        segment(grey_image, _uint8_model(), tile=128, overlap=32)


def test_the_cli_prints_the_warning_as_one_line(capsys, tmp_path):
    from napari_semseg import save_model

    model_file = save_model(_uint8_model(), tmp_path / "m.safetensors")
    image = tmp_path / "u16.tif"
    tifffile.imwrite(image, np.random.default_rng(0).integers(0, 4096, (96, 96), np.uint16))
    code = main(["predict", str(image), "--model", str(model_file), "--output",
                 str(tmp_path / "o.tif"), "--tile", "96", "--overlap", "32"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "warning:" in ln]
    assert code == 0 and len(lines) == 1 and "uint16" in lines[0] and "8-bit" in lines[0]


def test_a_fifo_as_input_or_model_is_refused_not_waited_on(capsys, tmp_path, model_file,
                                                          good_tif):
    import os

    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    code, err = run_cli(capsys, fifo, "--model", model_file, "--output", tmp_path / "o.zarr")
    assert code == 2 and "not a regular file (a pipe" in err and err.count("\n") == 0
    model_fifo = tmp_path / "model_pipe.safetensors"
    os.mkfifo(model_fifo)
    code, err = run_cli(capsys, good_tif, "--model", model_fifo, "--output", tmp_path / "o.zarr")
    assert code == 2 and "not a regular file" in err


def test_a_truncated_tiff_is_refused_before_work(capsys, tmp_path, model_file):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (512, 512), np.uint8))
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[:8] + data[8:len(data) // 2])  # the header claims more than is there
    if tifffile.TiffFile(cut).pages.first.dataoffsets[0] + \
            tifffile.TiffFile(cut).pages.first.databytecounts[0] <= cut.stat().st_size:
        pytest.skip("tifffile put the header at the end of this file")
    code, err = run_cli(capsys, cut, "--model", model_file, "--output", tmp_path / "o.zarr")
    assert code == 2 and "is truncated" in err and err.count("\n") == 0
    assert not (tmp_path / "o.zarr").exists()


def test_an_ome_zarr_naming_a_missing_array_is_one_line(capsys, tmp_path, model_file):
    import zarr

    store = tmp_path / "img.ome.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    root.create_array("0", shape=(64, 64), dtype=np.uint8)
    root.attrs["multiscales"] = [{"datasets": [{"path": "missing"}]}]
    code, err = run_cli(capsys, store, "--model", model_file, "--output", tmp_path / "o.zarr")
    assert code == 2 and "names an array that is not there" in err and err.count("\n") == 0


def test_evaluate_json_into_a_missing_folder_or_over_a_file_is_refused_before_scoring(
        capsys, tmp_path):
    truth = tmp_path / "truth.tif"
    tifffile.imwrite(truth, np.ones((32, 32), np.uint8))
    code = main(["evaluate", str(truth), "--truth", str(truth), "--json",
                 str(tmp_path / "no" / "such" / "r.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "does not exist" in err and err.count("\n") == 0
    report = tmp_path / "r.json"
    report.write_text("precious")
    code = main(["evaluate", str(truth), "--truth", str(truth), "--json", str(report)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "pass --overwrite" in err and report.read_text() == "precious"
    assert main(["evaluate", str(truth), "--truth", str(truth), "--json", str(report),
                 "--overwrite"]) == 0
    assert "mean_iou" in report.read_text()


def test_a_model_from_a_pretrained_start_warns_only_for_unlike_inputs():
    """The start's ImageNet statistics are folded into the percentile normalization: the
    expected range follows them (a uint8 image like the training data gives no warning)."""
    import warnings

    import torch

    from napari_semseg import build_model
    from napari_semseg.core.errors import SemSegWarning
    from napari_semseg.core.normalize import Normalization
    from napari_semseg.core.pretrained import start_normalization

    torch.manual_seed(0)
    model = build_model("unet", "mobilenet_v2", in_channels=1, classes=2, encoder_depth=3,
                        decoder_channels=(16, 8, 8), encoder_weights="mobilenet_v2-imagenet")
    model.metadata.normalization = start_normalization(
        Normalization("percentile", [20.0], [1 / 200.0]), model.metadata.start)
    like = np.random.default_rng(0).integers(20, 220, (128, 128)).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SemSegWarning)
        segment(like, model, tile=128, overlap=32)
    with pytest.warns(SemSegWarning, match="looks unlike"):
        segment(like.astype(np.uint16) * 256, model, tile=128, overlap=32)
