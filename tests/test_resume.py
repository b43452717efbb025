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
