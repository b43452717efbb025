"""Resume after a real kill: ``napari-semseg predict`` is SIGKILLed mid-run (twice), restarted with
``--resume``, computes only the missing chunks and writes exactly the uninterrupted output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_semseg import build_model, save_model, segment
from napari_semseg.core.normalize import Normalization
from napari_semseg.core.writers import DONE_DIR, partial_path

OPTS = ["--tile", "96", "--overlap", "32", "--device", "cpu", "--probabilities"]
N_CHUNKS = 9 * 8  # 520 x 500 px in 64-px chunks


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    model = build_model("unet", "resnet18", in_channels=1, classes=3, encoder_depth=3,
                        decoder_channels=(32, 16, 8), tile=128, halo=16,
                        normalization=Normalization("meanstd", [127.0], [1 / 70.0]))
    model_file = save_model(model, tmp_path / "model.safetensors")
    image = (np.random.default_rng(0).random((520, 500)) * 255).astype(np.uint8)
    tif = tmp_path / "in.tif"
    tifffile.imwrite(tif, image, tile=(128, 128))
    return model_file, tif


def start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "napari_semseg", "predict", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def done_markers(out: Path) -> int:
    folder = partial_path(out) / DONE_DIR
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def kill_after(proc: subprocess.Popen, out: Path, at_least: int, timeout: float = 180) -> int:
    """SIGKILL ``proc`` as soon as ``at_least`` chunks are on disk; return how many were."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        n = done_markers(out)
        if n >= at_least:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return done_markers(out)
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.stderr.read()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the run made no progress")


def test_killed_twice_then_resumed_equals_uninterrupted(files, tmp_path):
    model_file, tif = files
    out = tmp_path / "out.zarr"
    args = [str(tif), "--model", str(model_file), "--output", str(out), *OPTS]
    first = kill_after(start(args), out, at_least=3)
    assert not out.exists() and partial_path(out).exists()
    assert 3 <= first < N_CHUNKS
    second = kill_after(start(args + ["--resume"]), out, at_least=first + 6)
    assert not out.exists()
    assert first + 6 <= second < N_CHUNKS
    proc = start(args + ["--resume"])
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert f"resuming: {second} chunks already done" in stderr
    assert "summary: 1 done, 0 skipped (already complete), 0 failed" in stdout
    assert out.exists() and not partial_path(out).exists()
    ref = segment(tif, model_file, tile=96, overlap=32, device="cpu", probabilities=True)
    root = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(root["0"][:], ref.labels)
    np.testing.assert_array_equal(root["probabilities/0"][:], ref.probabilities)
    # a further --resume finds the output complete and does nothing
    proc = start(args + ["--resume"])
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "0 done, 1 skipped" in stdout


def test_resume_with_other_settings_is_refused(files, tmp_path, capsys):
    from napari_semseg.cli import main
    from napari_semseg.core.errors import Cancelled

    model_file, tif = files
    out = tmp_path / "out.zarr"
    with pytest.raises(Cancelled):
        segment(tif, model_file, output=out, tile=96, overlap=32, device="cpu",
                probabilities=True, callback=lambda e: e.done < 12)
    code = main(["predict", str(tif), "--model", str(model_file), "--output", str(out),
                 "--tile", "128", "--overlap", "32", "--device", "cpu", "--probabilities",
                 "--resume"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot resume" in err and err.count("\n") == 0
    assert partial_path(out).exists() and not out.exists()


def _interrupt(tif, model_file, out):
    from napari_semseg.core.errors import Cancelled

    with pytest.raises(Cancelled):
        segment(tif, model_file, output=out, tile=96, overlap=32, device="cpu",
                probabilities=True, callback=lambda e: e.done < 12)
    assert partial_path(out).exists()


def test_resume_after_the_input_was_replaced_is_refused(files, tmp_path, capsys):
    """Issue 15: kill, replace the input by another image of the same shape and dtype, resume:
    the output was half of each, marked complete. The fingerprint now covers the content."""
    from napari_semseg.cli import main

    model_file, tif = files
    out = tmp_path / "out.zarr"
    _interrupt(tif, model_file, out)
    other = (np.random.default_rng(7).random((520, 500)) * 255).astype(np.uint8)
    tifffile.imwrite(tif, other, tile=(128, 128))  # same path, shape and dtype
    code = main(["predict", str(tif), "--model", str(model_file), "--output", str(out), *OPTS,
                 "--resume"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot resume" in err and err.count("\n") == 0
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_resume_of_a_complete_output_checks_how_it_was_made(files, tmp_path, suffix):
    """``--resume`` skips a complete output only when it was made by this very run; another
    model or other outputs asked for are refused, not skipped silently."""
    from napari_semseg.core.errors import SemSegError

    model_file, tif = files
    out = tmp_path / f"out{suffix}"
    opts = dict(tile=96, overlap=32, device="cpu")
    segment(tif, model_file, output=out, **opts)
    stamp = out.stat().st_mtime_ns
    events = []
    segment(tif, model_file, output=out, resume=True, callback=events.append, **opts)
    assert "already complete" in events[0].message and out.stat().st_mtime_ns == stamp
    with pytest.raises(SemSegError, match="made from another input, model or output options"):
        segment(tif, model_file, output=out, resume=True, probabilities=True, **opts)
    torch.manual_seed(1)
    other_model = build_model("unet", "resnet18", in_channels=1, classes=3, encoder_depth=3,
                              decoder_channels=(32, 16, 8), tile=128, halo=16,
                              normalization=Normalization("meanstd", [127.0], [1 / 70.0]))
    with pytest.raises(SemSegError, match="made from another input, model or output options"):
        segment(tif, other_model, output=out, resume=True, **opts)
    assert out.stat().st_mtime_ns == stamp


def test_resume_of_a_foreign_complete_file_is_refused(files, tmp_path):
    from napari_semseg.core.errors import SemSegError

    model_file, tif = files
    out = tmp_path / "labels.tif"
    tifffile.imwrite(out, np.zeros((520, 500), np.uint8))  # not written by napari-semseg
    with pytest.raises(SemSegError, match="does not say how it was made"):
        segment(tif, model_file, output=out, resume=True, tile=96, overlap=32, device="cpu")
    assert not np.any(tifffile.imread(out))
