"""Training from pretrained starts (encoder_weights) and the first answer of a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_semseg import load_model, save_model, segment
from napari_semseg.cli import main
from napari_semseg.core import train as train_module
from napari_semseg.core.errors import SemSegError
from napari_semseg.core.pretrained import list_starts, start_normalization, write_start
from napari_semseg.core.scribbles import make_scribbles
from napari_semseg.core.settings import TrainSettings
from napari_semseg.core.train import estimate_training_normalization, iter_train, train
from napari_semseg.core.training.callbacks.first_answer import HeldOutLabels

FAST = dict(encoder="mobilenet_v2", encoder_depth=3, decoder_channels="16,8,8", patch_size=64,
            batch_size=2, steps_per_epoch=2, epochs=1, device="cpu", threads=1)


def blobs(seed=0, size=96):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    dense = np.ones((size, size), np.uint8)
    for _ in range(6):
        cy, cx, r = rng.integers(10, size - 10, 2).tolist() + [int(rng.integers(6, 14))]
        dense[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 2
    img = np.clip(np.where(dense == 2, 170, 70) + rng.normal(0, 12, dense.shape), 0, 255)
    return img.astype(np.uint8), dense, make_scribbles(dense, fraction=0.05, radius=1, seed=seed)


def bundled(name="mobilenet_v2-imagenet"):
    return next(s for s in list_starts() if s.name == name)


# ------------------------------------------------------------------ encoder_weights plumbing


def test_default_start_is_the_bundled_imagenet_start_with_its_normalization():
    img, _, scribbles = blobs()
    model = train(img, scribbles, **FAST)
    start = model.metadata.start
    assert TrainSettings().encoder == "mobilenet_v2"
    assert start["name"] == "mobilenet_v2-imagenet" and start["sha256"] == bundled().sha256
    from napari_semseg.core.io import ImageSource

    plain = estimate_training_normalization([ImageSource(img, None)], "percentile", seed=0)
    assert model.metadata.normalization == start_normalization(plain, start)
    x = model.metadata.normalization.apply(img[None].astype(np.float32))
    # what the network sees is centred as the start expects (ImageNet mean/std), not 0-1
    assert x.min() < -1.0


def test_random_start_and_encoders_without_a_bundled_start():
    from napari_semseg.core.io import ImageSource

    img, _, scribbles = blobs()
    plain = estimate_training_normalization([ImageSource(img, None)], "percentile", seed=0)
    for options in ({"encoder_weights": None}, {"encoder_weights": "none"},
                    {"encoder": "resnet18"}):
        model = train(img, scribbles, **{**FAST, **options})
        assert model.metadata.start is None, options
        assert model.metadata.normalization == plain, options


def test_a_start_file_is_used_and_recorded(tmp_path):
    from napari_semseg.core.pretrained import reference_encoder

    torch.manual_seed(3)
    encoder = reference_encoder("mobilenet_v2", depth=3)
    path = tmp_path / "mine.safetensors"
    digest = write_start(encoder.state_dict(), path, encoder="mobilenet_v2", origin="test",
                         licence="CC0")
    img, _, scribbles = blobs()
    captured = {}
    original = train_module.SegmentationTask.create

    def spy(data, settings, device, base=None):
        task = original(data, settings, device, base)
        captured["first_conv"] = task.net.net.encoder.features[1].conv[0][0].weight.clone()
        return task

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module.SegmentationTask, "create", staticmethod(spy))
        model = train(img, scribbles, encoder_weights=str(path), **FAST)
    assert model.metadata.start["kind"] == "file" and model.metadata.start["sha256"] == digest
    expected = encoder.state_dict()["features.1.conv.0.0.weight"].half().float()
    assert torch.equal(captured["first_conv"], expected)  # the file's weights were loaded


@pytest.mark.parametrize("value, words", [
    ("no-such-start", "neither a bundled start"),
    ("NOT_A_FILE", "not a safetensors file"),
    ("imagenet", "offline"),
    ("mobilenet_v2-imagenet", "is for encoder mobilenet_v2, not resnet18"),
])
def test_bad_starts_are_one_line_before_any_data_is_read(tmp_path, monkeypatch, value, words):
    if value == "NOT_A_FILE":
        value = str(tmp_path / "weights.pth")
        (tmp_path / "weights.pth").write_bytes(b"\x80\x04not a safetensors file")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("napari_semseg.core.pretrained._hub_reachable", lambda: False)

    def no_data(*args, **kwargs):
        raise AssertionError("the data were read before the start was checked")

    monkeypatch.setattr(train_module, "prepare_data", no_data)
    encoder = "resnet18" if words.endswith("resnet18") else "mobilenet_v2"
    img, _, scribbles = blobs()
    with pytest.raises(SemSegError) as info:
        iter_train(img, scribbles, encoder=encoder, encoder_weights=value, device="cpu")
    assert words in str(info.value) and "\n" not in str(info.value)


def test_cli_encoder_weights(tmp_path, capsys):
    import tifffile

    img, _, scribbles = blobs()
    tifffile.imwrite(tmp_path / "a.tif", img)
    tifffile.imwrite(tmp_path / "a_labels.tif", scribbles)
    fast = ["--encoder-depth", "3", "--decoder-channels", "16,8,8", "--patch-size", "64",
            "--batch-size", "2", "--steps-per-epoch", "2", "--epochs", "1", "--device", "cpu",
            "--threads", "1"]
    out = tmp_path / "m.safetensors"
    rc = main(["train", "-i", str(tmp_path / "a.tif"), "-l", str(tmp_path / "a_labels.tif"),
               "-o", str(out), "--encoder-weights", "none"] + fast)
    assert rc == 0 and load_model(out).metadata.start is None
    bad = tmp_path / "bad.safetensors"
    capsys.readouterr()
    rc = main(["train", "-i", str(tmp_path / "a.tif"), "-l", str(tmp_path / "a_labels.tif"),
               "-o", str(bad), "--encoder-weights", str(tmp_path / "missing.safetensors")] + fast)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not bad.exists()
    assert len(err.splitlines()) == 1 and "missing.safetensors" in err


# ------------------------------------------------------------------ the first answer


def test_first_answer_is_previewed_first_and_a_short_budget_returns_a_usable_model(tmp_path):
    img, _, scribbles = blobs(size=128)
    settings = dict(FAST, epochs=None, time_budget=1.0)
    job = iter_train(img, scribbles, first_answer=True, **settings)
    events = []
    while True:
        try:
            events.append(next(job))
        except StopIteration as stop:
            model = stop.value
            break
    first = events[0]
    assert first.model is not None and first.model.metadata.arch == "feature-head"
    assert "first answer" in first.message
    record = model.metadata.training
    # under 30 s a few CNN steps never displace the first answer (a lucky validation would)
    assert record["returned"] == "first answer" and record["first_answer"]["fit_s"] > 0
    labels = np.asarray(segment(img, model).labels)
    assert labels.shape == img.shape and set(np.unique(labels)) <= {1, 2}
    path = save_model(model, tmp_path / "m.safetensors")
    again = np.asarray(segment(img, load_model(path)).labels)
    assert np.array_equal(again, labels)


def test_epoch_bounded_runs_have_no_first_answer_unless_asked():
    img, _, scribbles = blobs()
    job = iter_train(img, scribbles, **FAST)
    assert next(job).model is None
    job.close()
    job = iter_train(img, scribbles, first_answer=True, **FAST)
    assert next(job).model.metadata.arch == "feature-head"
    job.close()


def test_the_first_answer_does_not_see_the_validation_blocks():
    labels = np.arange(1, 1 + 64 * 64).reshape(64, 64).astype(np.int32)
    held = HeldOutLabels(labels, None, image=0, block=32, held_out=frozenset({(0, 1, 0)}))
    out = held.read(0, slice(16, 64), slice(0, 48))[0]
    assert (out[16:, :32] == 0).all()  # rows 32-63, cols 0-31: the held-out block
    assert np.array_equal(out[:16], labels[16:32, :48])
    assert np.array_equal(out[16:, 32:], labels[32:64, 32:48])


def test_first_answer_is_on_by_default_only_for_time_bounded_runs():
    from napari_semseg.core.train import first_answer_wanted

    assert first_answer_wanted(TrainSettings(time_budget=10.0))
    assert not first_answer_wanted(TrainSettings(time_budget=10.0, epochs=3))
    assert not first_answer_wanted(TrainSettings())
    assert not first_answer_wanted(TrainSettings(time_budget=10.0, first_answer=False))
    assert first_answer_wanted(TrainSettings(epochs=3, first_answer=True))


def test_stronger_feature_heads_are_fitted_between_cnn_steps_and_recorded():
    img, _, scribbles = blobs(size=192)
    model = train(img, scribbles, first_answer=True, **dict(FAST, epochs=4))
    deep = model.metadata.training["first_answer"]["candidates"]["deep"]
    assert deep["fit_s"] > 0  # fitted on its own stopwatch, one window per CNN step
    assert deep["mean_iou"] is None or 0 <= deep["mean_iou"] <= 1
    labels = np.asarray(segment(img, model).labels)
    assert labels.shape == img.shape


def test_a_best_feature_head_is_refitted_on_all_strokes_and_returned():
    img, _, scribbles = blobs(size=192)
    # a CNN that cannot learn (learning rate ~0) leaves a feature head the best model
    model = train(img, scribbles, first_answer=True, **dict(FAST, epochs=6, learning_rate=1e-9))
    record = model.metadata.training
    refit = record["first_answer"]["refit"]
    assert record["returned"] == "first answer" and model.metadata.arch == "feature-head"
    assert refit["of"] in ("quick", "deep") and refit["fit_s"] > 0 and refit["swapped_in"]
    labels = np.asarray(segment(img, model).labels)
    assert labels.shape == img.shape and set(np.unique(labels)) <= {1, 2}


def test_candidate_plan_follows_the_budget():
    from napari_semseg.core.training.callbacks.first_answer import (
        DEEP_TAPS, candidates, quick_budget)

    assert quick_budget(None) is None
    assert quick_budget(10.0) == 7.0  # a short run is mostly its first answer
    assert quick_budget(120.0) == 8.0
    assert candidates(10.0, quick_complete=False) == {}
    plan = candidates(120.0, quick_complete=False)
    assert plan["shallow"] == {"time_budget": 12.0}
    assert plan["deep"] == {"time_budget": 12.0, "taps": DEEP_TAPS}
    assert "shallow" not in candidates(120.0, quick_complete=True)  # the same head again
    assert candidates(None, quick_complete=True) == {"deep": {"time_budget": None,
                                                              "taps": DEEP_TAPS}}


def test_a_candidate_replaces_the_best_only_when_it_validates_better():
    from napari_semseg.core.training.callbacks.first_answer import FirstAnswer
    from napari_semseg.core.training.state import Budget, LoopState

    loop = LoopState(Budget(epochs=1, steps_per_epoch=1))
    FirstAnswer._offer(loop, "quick", {"mean_iou": 0.6}, "")
    FirstAnswer._offer(loop, "worse", {"mean_iou": 0.5}, "")
    assert loop.best_model == "quick" and loop.best == 0.6
    FirstAnswer._offer(loop, "better", {"mean_iou": 0.7}, "")
    assert loop.best_model == "better" and loop.best_metrics == {"mean_iou": 0.7}
