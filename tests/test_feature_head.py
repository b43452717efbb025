"""The instant first model: frozen MobileNetV2 features + a light head (core/first_answer).

Everything runs on synthetic data made here, with randomly initialised encoder weights in
MobileNetV2's layout (the pretrained ImageNet weights are not needed to test the mechanics).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_semseg import build_model, load_model, read_metadata, save_model, segment
from napari_semseg.core.errors import SemSegError
from napari_semseg.core.first_answer.api import fit_feature_head, open_inputs
from napari_semseg.core.first_answer.features import choose_pixels
from napari_semseg.core.first_answer.fit import FeatureHeadSettings, iter_fit_feature_head
from napari_semseg.core.first_answer.filters import filter_bank, filter_channels
from napari_semseg.core.first_answer.net import (
    FeatureHeadNet,
    fold_batch_norms,
    mobilenet_v2_blocks,
)
from napari_semseg.core.first_answer.upsample import cascade_sum, sample_cascade
from napari_semseg.core.normalize import Normalization
from napari_semseg.core.sampling import scan_annotations


def random_encoder_state(seed: int = 0, last: int = 6) -> dict[str, torch.Tensor]:
    """MobileNetV2 weights as torchvision names them, random, with non-trivial batch norms."""
    torch.manual_seed(seed)
    blocks = mobilenet_v2_blocks(last)
    for m in blocks.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    state = {f"features.{k}": v for k, v in blocks.state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(1000, 1280)  # ignored, as in torchvision files
    return state


def textures(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes that differ in texture and slightly in brightness: class 2 (a blobby
    region) is striped with period 4, class 1 is smooth; both have the same noise."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), 12)
    labels = np.where(field > 0, 2, 1).astype(np.uint8)
    stripes = 35.0 * np.sign(np.sin(np.arange(shape[1]) * np.pi / 2 + 0.3))[None, :]
    image = 110.0 + 10.0 * (labels == 2) + np.where(labels == 2, stripes, 0.0)
    image += rng.normal(0, 12, shape)
    return image.clip(0, 255).astype(np.uint8), labels


def strokes(labels: np.ndarray, seed: int, fraction: float = 0.01) -> np.ndarray:
    from napari_semseg.core.scribbles import make_scribbles

    return make_scribbles(labels, fraction=fraction, radius=1, seed=seed)


@pytest.fixture(scope="module")
def fitted():
    image, labels = textures((256, 320), 0)
    painted = strokes(labels, 0)
    started = time.perf_counter()
    model = fit_feature_head(image, painted, encoder_state=random_encoder_state(),
                             class_names=["smooth", "striped"], seed=0, steps=100)
    seconds = time.perf_counter() - started
    return model, image, labels, painted, seconds


# --------------------------------------------------------------------------- the network


def test_fitted_model_separates_textures_on_unpainted_pixels(fitted):
    model, _, _, _, seconds = fitted
    assert seconds < 120, "fitting froze"  # a guard against a hang, not a speed target
    image, labels = textures((288, 352), 1)  # a new image of the same kind
    result = segment(image, model, device="cpu", amp=False)
    accuracy = float((result.labels == labels).mean())
    assert accuracy > 0.85, f"accuracy {accuracy:.3f} on a new image (chance 0.5)"
    _, painted_image, painted_labels, painted, _ = fitted
    own = segment(painted_image, model, device="cpu", amp=False).labels
    unpainted = painted == 0
    assert (own[unpainted] == painted_labels[unpainted]).mean() > 0.85


@pytest.mark.parametrize(("raw", "filters"), [(True, ()), (False, ()), (True, (1.0, 3.0))])
def test_head_on_pixel_features_equals_the_forward_pass(raw, filters):
    torch.manual_seed(1)
    net = FeatureHeadNet(2, 3, hidden=8, raw=raw, filters=filters).eval()
    net.load_encoder_state(random_encoder_state(1))
    x = torch.randn(1, 2, 96, 160)
    ys, xs = torch.randint(0, 96, (300,)), torch.randint(0, 160, (300,))
    n = net.n_features
    w1, b1, w2, b2 = torch.randn(8, n), torch.randn(8), torch.randn(3, 8), torch.randn(3)
    mean, std = torch.randn(n), torch.rand(n) + 0.5
    net.set_head([(w1, b1), (w2, b2)], mean, std)
    with torch.no_grad():
        feats = net.pixel_features(x, ys, xs)
        expected = torch.relu((feats - mean) / std @ w1.T + b1) @ w2.T + b2
        logits = net(x)[0, :, ys, xs].T
    assert feats.shape == (300, n)
    assert n == sum(net.feature_channels) + 2 * raw + len(filters) * (2 + 4)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-3)


def test_filter_bank_responses_are_the_classic_filters():
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(80.0), indexing="ij")
    sigma = 2.0
    # constant image: smoothing keeps it, every derivative is zero
    flat = filter_bank(torch.full((1, 1, 64, 80), 3.0), [sigma])[0]
    assert flat.shape[0] == filter_channels(1, [sigma]) == 5
    torch.testing.assert_close(flat[0], torch.full((64, 80), 3.0))
    assert flat[1:].abs().max() < 1e-4
    # a ramp of slope 0.5 along x: gradient magnitude sigma * 0.5 away from the borders
    ramp = filter_bank((0.5 * xx)[None, None], [sigma])[0]
    inner = (slice(10, -10), slice(10, -10))
    torch.testing.assert_close(ramp[1][inner], torch.full((44, 60), sigma * 0.5))
    assert ramp[2][inner].abs().max() < 1e-3  # no curvature
    # a bright vertical line: the Laplacian is negative on it, one Hessian eigenvalue strongly
    # negative (across the ridge) and the other near zero (along it)
    line = torch.exp(-0.5 * ((xx - 40) / 1.5) ** 2)[None, None]
    r = filter_bank(line, [sigma])[0]
    on = (slice(10, -10), 40)
    assert (r[2][on] < -0.1).all() and (r[4][on] < -0.1).all()
    assert r[3][on].abs().max() < 0.02
    # colour: smoothed channels per channel, derivatives on their mean
    rgb = filter_bank(torch.rand(1, 3, 64, 80), [1.0, 2.0])
    assert rgb.shape == (1, filter_channels(3, [1.0, 2.0]), 64, 80) == (1, 14, 64, 80)
    # under the prediction engine's bf16 autocast and channels-last tiles: the same float32
    # maps (that combination sends tall depthwise kernels down a path that takes minutes)
    x = torch.rand(1, 3, 64, 80)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = filter_bank(x.contiguous(memory_format=torch.channels_last), [1.0, 4.0])
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, filter_bank(x, [1.0, 4.0]))


def test_sampled_cascade_equals_the_upsampled_sum():
    torch.manual_seed(2)
    maps = [torch.randn(1, 3, 64 // s, 96 // s) for s in (32, 16, 8, 4, 2)]
    full = cascade_sum(maps, (64, 96))[0]
    ys, xs = torch.arange(64).repeat_interleave(96), torch.arange(96).repeat(64)
    sampled = sum(sample_cascade(maps, (64, 96), ys, xs))
    torch.testing.assert_close(sampled.T.reshape(3, 64, 96), full, rtol=1e-5, atol=1e-5)


def test_folded_batch_norms_give_the_same_features():
    blocks = mobilenet_v2_blocks(6)
    blocks.load_state_dict({k[9:]: v for k, v in random_encoder_state(3).items()
                            if k.startswith("features.")})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = blocks.eval()(x)
        after = fold_batch_norms(blocks)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in blocks.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_encoder_state_must_match_mobilenet_v2():
    net = FeatureHeadNet(1, 2)
    state = random_encoder_state()
    state["features.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    with pytest.raises(RuntimeError):
        net.load_encoder_state(state)


# --------------------------------------------------------------------------- as a model


def test_build_model_knows_the_architecture():
    model = build_model("feature-head", "mobilenet_v2", 3, 4, scales=[1, 2], hidden=0)
    assert model.metadata.stride == 32
    assert model.metadata.arch_kwargs == {"scales": [1, 2], "hidden": 0}
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 4, 64, 96)
    with pytest.raises(SemSegError, match="feature-head"):
        build_model("feature-head", "mobilenet_v2", 1, 2, taps=[2])


def test_round_trip_and_tiles_agree_with_a_whole_image_pass(fitted, tmp_path):
    model, _, _, _, _ = fitted
    path = save_model(model, tmp_path / "first.safetensors")
    meta = read_metadata(path)
    assert meta.arch == "feature-head" and meta.class_names == ["smooth", "striped"]
    assert meta.training["kind"] == "feature-head" and meta.normalization is not None
    loaded = load_model(path)
    image, _ = textures((640, 704), 2)
    x = torch.from_numpy(meta.normalization.apply(image[None].astype(np.float32)))[None]
    with torch.no_grad():
        whole = model(x)[0]
        torch.testing.assert_close(loaded(x)[0], whole, rtol=1e-4, atol=1e-4)
    expected = whole.argmax(0).numpy() + 1
    # default overlap: 2 x the model's halo (192 pixels); 448-pixel tiles make a 2 x 2 grid
    tiled = segment(image, loaded, device="cpu", amp=False, tile=448).labels
    agreement = float((tiled == expected).mean())
    assert agreement >= 0.999, f"tiled vs whole-image labels agree on {agreement:.5f}"


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_before_any_work():
    image, labels = textures((64, 64), 3)
    one_class = np.where(labels > 0, 1, 0).astype(np.uint8)
    state = random_encoder_state()
    with pytest.raises(SemSegError, match="two classes"):
        fit_feature_head(image, one_class, encoder_state=state)
    with pytest.raises(SemSegError, match="encoder_state"):
        fit_feature_head(image, labels)
    with pytest.raises(SemSegError, match="shape"):
        fit_feature_head(image, labels[:32], encoder_state=state)
    with pytest.raises(SemSegError, match="integer"):
        fit_feature_head(image, labels.astype(float), encoder_state=state)
    with pytest.raises(SemSegError, match="unknown option"):
        fit_feature_head(image, labels, encoder_state=state, epochs=3)
    with pytest.raises(SemSegError, match="time_budget"):
        fit_feature_head(image, labels, encoder_state=state, time_budget=0)
    with pytest.raises(SemSegError, match="MobileNetV2"):
        fit_feature_head(image, labels, encoder_state={"features.0.0.weight": torch.zeros(1)})


def test_held_out_pixels_are_never_sampled_and_checks_run_at_call_time():
    image, labels = textures((96, 128), 4)
    painted = strokes(labels, 4, fraction=0.05)
    sources, annotations = open_inputs(image, painted)
    index = scan_annotations(annotations, 64, n_classes=2)
    right_half = lambda rows: rows[:, 3] >= 64
    groups = choose_pixels(index, 2, 10_000, np.random.default_rng(0), right_half)
    assert groups and all(key[3] == 0 for key in groups)  # only blocks of the left half
    assert sum(len(g) for g in groups.values()) == int((painted[:, :64] > 0).sum())
    everything = lambda rows: np.ones(len(rows), bool)
    settings = FeatureHeadSettings()
    with pytest.raises(SemSegError, match="held-out"):  # raised by the call, not by next()
        iter_fit_feature_head(sources, annotations, n_classes=2, settings=settings,
                              normalization=Normalization("none"), holdout=everything,
                              encoder_state=random_encoder_state())
