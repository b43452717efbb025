"""Pretrained starts: bundled weights, local files, the smp download, checks and metadata."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from napari_semseg import build_model, load_model, save_model
from napari_semseg.core import models, pretrained
from napari_semseg.core.errors import SemSegError
from napari_semseg.core.normalize import Normalization
from napari_semseg.core.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    channel_statistics,
    list_starts,
    save_encoder,
    start_normalization,
    write_start,
)

ROOT = Path(__file__).resolve().parents[1]
IMAGENET = "mobilenet_v2-imagenet"
SMALL = {"encoder_depth": 4, "decoder_channels": (32, 16, 16, 16)}


@pytest.fixture
def no_work(monkeypatch):
    """Make building a network fail loudly: errors must come before any work starts."""
    def _refuse(*args, **kwargs):
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr(models, "_make_net", _refuse)


def assert_one_line(exc_info, *words: str) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and text.strip() == text and len(text) < 400, text
    for word in words:
        assert word in text, text
    return text


def first_conv(model) -> torch.Tensor:
    return model.net.encoder.features[0][0].weight.detach()


def test_bundled_starts_are_listed_with_provenance():
    starts = {s.name: s for s in list_starts()}
    assert IMAGENET in starts
    for start in starts.values():
        assert start.path.exists() and start.note_path.exists()
        assert start.path.stat().st_size == start.size_bytes <= 10 * 2**20
        assert hashlib.sha256(start.path.read_bytes()).hexdigest() == start.sha256
        assert start.licence and start.origin and start.encoder == "mobilenet_v2"
        assert start.sha256 in start.note_path.read_text()
        dtypes = {str(v.dtype) for v in load_file(str(start.path)).values()}
        assert dtypes <= {"torch.float16", "torch.int64"} and "torch.float16" in dtypes


def test_weights_folder_ships_in_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    assert "napari_semseg.weights" in setuptools["packages"]
    assert {"*.safetensors", "*.md", "*.json"} <= set(setuptools["package-data"]
                                                       ["napari_semseg.weights"])


@pytest.mark.parametrize("name", [s.name for s in list_starts()])
@pytest.mark.parametrize("channels", [1, 3, 5])
def test_bundled_start_loads_with_recorded_sha256_and_shapes(name, channels):
    start = next(s for s in list_starts() if s.name == name)
    model = build_model("unet", "mobilenet_v2", channels, 2, encoder_weights=name, **SMALL)
    record = model.metadata.start
    assert record["name"] == name and record["kind"] == "bundled"
    assert record["sha256"] == start.sha256 == hashlib.sha256(start.path.read_bytes()).hexdigest()
    stored = load_file(str(start.path))
    rgb = stored["features.0.0.weight"].float()
    conv = first_conv(model)
    assert conv.shape == (32, channels, 3, 3)
    if channels == 3:
        assert torch.equal(conv, rgb)
    elif channels == 1:
        assert torch.allclose(conv, rgb.sum(1, keepdim=True))
    else:  # smp's patch_first_conv: channels cycle through RGB, scaled by 3 / channels
        expected = torch.stack([rgb[:, c % 3] for c in range(channels)], 1) * 3 / channels
        assert torch.allclose(conv, expected)
    other = model.net.encoder.state_dict()["features.3.conv.1.0.weight"]
    assert torch.equal(other, stored["features.3.conv.1.0.weight"].float())
    with torch.no_grad():
        assert model(torch.randn(1, channels, 64, 64)).shape == (1, 2, 64, 64)


def _stripes(generator: torch.Generator, n: int = 4, size: int = 64):
    """Discs of stripes in one orientation on stripes of the orthogonal one (same intensity)."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    images, labels = [], []
    for _ in range(n):
        freq = 2 * math.pi / float(torch.empty(1).uniform_(4, 7, generator=generator))
        phase, angle = (float(v) for v in torch.rand(2, generator=generator) * 6.28)
        background = torch.sin(freq * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
        foreground = torch.sin(freq * (-xx * math.sin(angle) + yy * math.cos(angle)) + phase)
        cy, cx = torch.randint(8, size - 8, (2, 3), generator=generator).float()
        radius = torch.empty(3).uniform_(8, 16, generator=generator)
        disc = ((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
                < radius[:, None, None] ** 2).any(0)
        image = torch.where(disc, foreground, background) * 0.5 + 0.5
        images.append(image + 0.1 * torch.randn(size, size, generator=generator))
        labels.append(disc.long())
    return torch.stack(images)[:, None], torch.stack(labels)


def _late_loss(encoder_weights: str | None, seed: int, steps: int = 30) -> float:
    torch.manual_seed(seed)
    model = build_model("unet", "mobilenet_v2", 1, 2, encoder_weights=encoder_weights, **SMALL)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(100 + seed)
    mean, std = channel_statistics({"input_mean": IMAGENET_MEAN, "input_std": IMAGENET_STD}, 1)
    losses = []
    for _ in range(steps):
        x, y = _stripes(generator)
        loss = F.cross_entropy(model((x - mean[0]) / std[0]), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses[-10:]))


def test_bundled_start_learns_faster_than_random_init():
    torch.set_num_threads(1)
    pretrained_loss = np.mean([_late_loss(IMAGENET, seed) for seed in (0, 1)])
    random_loss = np.mean([_late_loss(None, seed) for seed in (0, 1)])
    assert pretrained_loss < random_loss


def test_offline_imagenet_fails_in_one_line_naming_bundled_starts(monkeypatch, no_work):
    import segmentation_models_pytorch as smp

    calls = []

    def offline(*args, **kwargs):
        calls.append(kwargs)
        raise OSError("Name or service not known")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", offline)
    monkeypatch.setattr(pretrained, "_hub_reachable", lambda: False)
    with pytest.raises(SemSegError) as exc:
        build_model("unet", "mobilenet_v2", 1, 2, encoder_weights="imagenet")
    assert_one_line(exc, "imagenet", "offline", IMAGENET)
    assert calls and all(c.get("local_files_only") for c in calls)  # no download attempted
    monkeypatch.setattr(pretrained, "_hub_reachable", lambda: True)
    with pytest.raises(SemSegError) as exc:  # a download that fails is reported the same way
        build_model("unet", "resnet18", 3, 2, encoder_weights="imagenet")
    assert_one_line(exc, "resnet18", "OSError", IMAGENET)


def test_imagenet_download_is_used_when_the_hub_answers(monkeypatch, tmp_path):
    import segmentation_models_pytorch as smp

    start = next(s for s in list_starts() if s.name == IMAGENET)
    (tmp_path / "model.safetensors").write_bytes(start.path.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"mean": [0.5, 0.5, 0.5],
                                                      "std": [0.25, 0.25, 0.25]}))
    monkeypatch.setattr(smp.encoders, "hf_hub_download",
                        lambda repo, filename, **kw: str(tmp_path / filename))
    model = build_model("unet", "mobilenet_v2", 3, 2, encoder_weights="imagenet", **SMALL)
    record = model.metadata.start
    assert record["kind"] == "download" and record["sha256"] == start.sha256
    assert "smp-hub/mobilenet_v2.imagenet" in record["origin"]
    assert record["input_mean"] == [0.5] * 3 and record["input_std"] == [0.25] * 3
    assert torch.equal(first_conv(model), load_file(str(start.path))["features.0.0.weight"].float())


def test_missing_path_fails_in_one_line(tmp_path, no_work):
    with pytest.raises(SemSegError) as exc:
        build_model("unet", "mobilenet_v2", 1, 2, encoder_weights=tmp_path / "nope.safetensors")
    assert_one_line(exc, "nope.safetensors", IMAGENET)


def test_unknown_name_fails_in_one_line(no_work):
    with pytest.raises(SemSegError) as exc:
        build_model("unet", "mobilenet_v2", 1, 2, encoder_weights="imagenet-but-typo")
    assert_one_line(exc, "imagenet-but-typo", "bundled")


@pytest.mark.parametrize("kind", ["pickle", "torch", "text"])
def test_non_safetensors_file_fails_in_one_line_without_unpickling(tmp_path, no_work, kind):
    path = tmp_path / f"weights.{kind}"
    state = {"features.0.0.weight": torch.zeros(32, 3, 3, 3)}
    if kind == "pickle":
        trap = _Trap()
        trap.payload = state
        path.write_bytes(pickle.dumps(trap))
    elif kind == "torch":
        torch.save(state, path)
    else:
        path.write_text("not weights at all\n")
    with pytest.raises(SemSegError) as exc:
        build_model("unet", "mobilenet_v2", 1, 2, encoder_weights=path)
    assert_one_line(exc, "not a safetensors file")
    assert not _Trap.unpickled


class _Trap:
    """Records whether anything unpickled it."""

    unpickled = False

    def __setstate__(self, state):
        type(self).unpickled = True
        self.__dict__.update(state)


def test_weights_of_another_encoder_fail_in_one_line(tmp_path, no_work):
    resnet = pretrained.reference_encoder("resnet18")
    path = tmp_path / "resnet18.safetensors"
    write_start(resnet.state_dict(), path, encoder="resnet18", origin="test", licence="test")
    with pytest.raises(SemSegError) as exc:
        build_model("unet", "mobilenet_v2", 1, 2, encoder_weights=path)
    assert_one_line(exc, "mobilenet_v2", "resnet18", "missing")


def test_weights_of_the_wrong_shape_fail_in_one_line(tmp_path, no_work):
    state = load_file(str(next(s for s in list_starts() if s.name == IMAGENET).path))
    state["features.1.conv.1.weight"] = torch.zeros(8, 32, 1, 1)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(SemSegError) as exc:
        build_model("unet", "mobilenet_v2", 1, 2, encoder_weights=path)
    assert_one_line(exc, "features.1.conv.1.weight", "shape")


def test_bundled_start_of_another_encoder_fails_in_one_line(no_work):
    with pytest.raises(SemSegError) as exc:
        build_model("unet", "resnet18", 1, 2, encoder_weights=IMAGENET)
    assert_one_line(exc, IMAGENET, "mobilenet_v2", "resnet18")


def test_damaged_bundled_start_is_refused(monkeypatch, tmp_path, no_work):
    start = next(s for s in list_starts() if s.name == IMAGENET)
    data = bytearray(start.path.read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / start.file).write_bytes(bytes(data))
    (tmp_path / "manifest.json").write_text((start.path.parent / "manifest.json").read_text())
    monkeypatch.setattr(pretrained, "weights_dir", lambda: tmp_path)
    with pytest.raises(SemSegError) as exc:
        build_model("unet", "mobilenet_v2", 1, 2, encoder_weights=IMAGENET)
    assert_one_line(exc, "damaged", "reinstall")


def test_local_start_file_and_model_file_load(tmp_path):
    source = build_model("unet", "mobilenet_v2", 3, 2, encoder_weights=IMAGENET, **SMALL)
    with torch.no_grad():
        for p in source.net.encoder.parameters():
            p.add_(0.01)
    start_file = tmp_path / "enc.safetensors"
    digest = save_encoder(source, start_file, origin="unit test", licence="CC0")
    model_file = save_model(source, tmp_path / "model.safetensors")
    expected = first_conv(source).half().float()
    for path in (start_file, model_file):
        model = build_model("unet", "mobilenet_v2", 3, 4, encoder_weights=str(path), **SMALL)
        record = model.metadata.start
        assert record["kind"] == "file" and record["file"] == path.name
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert torch.allclose(first_conv(model), expected, atol=1e-3)
    assert digest == hashlib.sha256(start_file.read_bytes()).hexdigest()
    assert build_model("unet", "mobilenet_v2", 3, 2, encoder_weights=start_file
                       ).metadata.start["origin"] == "unit test"


def test_one_channel_start_fits_one_channel_models_only(tmp_path, no_work):
    encoder = pretrained.reference_encoder("mobilenet_v2", in_channels=1)
    path = tmp_path / "grey.safetensors"
    write_start(encoder.state_dict(), path, encoder="mobilenet_v2", origin="t", licence="t")
    with pytest.raises(SemSegError) as exc:
        build_model("unet", "mobilenet_v2", 4, 2, encoder_weights=path)
    assert_one_line(exc, "1 input channels", "4")


def test_start_survives_save_and_load(tmp_path):
    model = build_model("unet", "mobilenet_v2", 1, 3, encoder_weights=IMAGENET, **SMALL)
    loaded = load_model(save_model(model, tmp_path / "m.safetensors"))
    assert loaded.metadata.start == model.metadata.start
    assert loaded.metadata.start["name"] == IMAGENET
    assert build_model("unet", "mobilenet_v2", 1, 3, **SMALL).metadata.start is None


def test_start_normalization_composes_percentiles_with_the_start_statistics():
    start = {"input_mean": list(IMAGENET_MEAN), "input_std": list(IMAGENET_STD)}
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 4000, (3, 8, 8)).astype(np.float32)
    base = Normalization("percentile", [100.0, 200.0, 300.0], [1 / 3000, 1 / 2000, 1 / 1000],
                         clip=[-1.0, 2.0])
    composed = start_normalization(base, start)
    x01 = (x - np.array(base.offset)[:, None, None]) * np.array(base.scale)[:, None, None]
    expected = ((x01 - np.array(IMAGENET_MEAN)[:, None, None])
                / np.array(IMAGENET_STD)[:, None, None])
    inside = (x01 > -1) & (x01 < 2)
    np.testing.assert_allclose(composed.apply(x)[inside], expected[inside], rtol=1e-4, atol=1e-4)
    grey = start_normalization(Normalization("percentile", [10.0], [0.01], clip=None), start)
    assert grey.offset[0] == pytest.approx(10 + np.mean(IMAGENET_MEAN) / 0.01)
    assert grey.scale[0] == pytest.approx(0.01 / np.mean(IMAGENET_STD))
    meanstd = Normalization("meanstd", [5.0], [0.5])
    assert start_normalization(meanstd, start) == meanstd
    assert start_normalization(base, None) == base


def test_five_channel_statistics_cycle_like_the_first_convolution():
    start = {"input_mean": [0.1, 0.2, 0.3], "input_std": [1.0, 2.0, 3.0]}
    assert channel_statistics(start, 5) == ([0.1, 0.2, 0.3, 0.1, 0.2], [1.0, 2.0, 3.0, 1.0, 2.0])
    assert channel_statistics(start, 3) == ([0.1, 0.2, 0.3], [1.0, 2.0, 3.0])
