"""Conditional generation: networks, model files, tiled synthesis, training (tiny data, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_semseg import (
    GeneratorSettings,
    SynthesizeSettings,
    build_generator,
    iter_synthesize,
    load_generator,
    read_generator_metadata,
    save_generator,
    synthesize,
    train_generator,
)
from napari_semseg.core.errors import Cancelled, SemSegError
from napari_semseg.core.generation.data import PairSampler
from napari_semseg.core.generation.networks import SegmentationDiscriminator, UNetGenerator
from napari_semseg.core.generation.noise import noise_window
from napari_semseg.core.generation.prepare import open_pairs
from napari_semseg.core.generation.steps import GanState, gan_step
from napari_semseg.core.io import ImageSource


def blocks(shape: tuple[int, int], classes: int, cell: int = 8, seed: int = 0) -> np.ndarray:
    """A label map of square cells of random classes 1..classes."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(1, classes + 1, (shape[0] // cell + 1, shape[1] // cell + 1))
    return np.kron(grid, np.ones((cell, cell), np.int64))[:shape[0], :shape[1]].astype(np.uint8)


def painted(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A uint8 image whose classes have distinct grey levels plus noise."""
    rng = np.random.default_rng(seed)
    levels = np.array([0, 50, 200, 120], np.float64)
    img = levels[labels] + rng.normal(0, 8, labels.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def tiny_generator():
    """An untrained 3-class greyscale generator with float32 output in [0, 1]."""
    torch.manual_seed(0)
    return build_generator(3, 1, base=4, depth=3, dtype="float32", intensity_low=[0.0],
                           intensity_high=[1.0], tile=64, overlap=32)


# --------------------------------------------------------------------------- noise


def test_noise_depends_only_on_position_and_seed():
    whole = noise_window(7, slice(0, 96), slice(0, 80), 2, 2, cell=16)
    part = noise_window(7, slice(30, 70), slice(-5, 50), 2, 2, cell=16)
    assert np.array_equal(whole[:, 30:70, 0:50], part[:, :, 5:])
    other = noise_window(8, slice(0, 96), slice(0, 80), 2, 2, cell=16)
    assert abs(np.corrcoef(whole[0].ravel(), other[0].ravel())[0, 1]) < 0.1
    assert abs(whole.mean()) < 0.1 and 0.8 < whole.std() < 1.2


# --------------------------------------------------------------------------- model files


def test_generator_round_trips_through_its_file(tmp_path, tiny_generator):
    tiny_generator.metadata.class_names = ["a", "b", "c"]
    path = save_generator(tiny_generator, tmp_path / "g.safetensors")
    meta = read_generator_metadata(path)
    assert meta.kind == "generator" and meta.class_names == ["a", "b", "c"]
    loaded = load_generator(path)
    onehot = torch.zeros(1, 3, 32, 32)
    onehot[:, 1] = 1
    noise = torch.randn(1, meta.noise_channels, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(onehot, noise), tiny_generator(onehot, noise))
    half = save_generator(tiny_generator, tmp_path / "h.safetensors", half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    with torch.no_grad():
        diff = (load_generator(half)(onehot, noise) - tiny_generator(onehot, noise)).abs().max()
    assert diff < 1e-2


def test_segmenter_and_generator_files_are_not_confused(tmp_path, tiny_model, tiny_generator):
    from napari_semseg import load_model, save_model

    seg = save_model(tiny_model, tmp_path / "seg.safetensors")
    gen = save_generator(tiny_generator, tmp_path / "gen.safetensors")
    with pytest.raises(SemSegError, match="segmentation model, not a generator") as err:
        load_generator(seg)
    assert "\n" not in str(err.value)
    with pytest.raises(SemSegError, match="not a segmentation model"):
        load_model(gen)
    with pytest.raises(SemSegError, match="segmentation model, not a generator"):
        synthesize(blocks((32, 32), 3), tiny_model)


# --------------------------------------------------------------------------- synthesis


def test_synthesize_is_deterministic_for_a_seed(tiny_generator):
    labels = blocks((70, 90), 3)
    a = synthesize(labels, tiny_generator, seed=3, device="cpu").image
    b = synthesize(labels, tiny_generator, seed=3, device="cpu").image
    c = synthesize(labels, tiny_generator, seed=4, device="cpu").image
    assert a.shape == labels.shape and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-4


@pytest.mark.parametrize("batch_size", [1, 3])
def test_tiled_synthesis_matches_a_whole_map_pass(tiny_generator, batch_size):
    labels = blocks((150, 173), 3)
    whole = synthesize(labels, tiny_generator, tile=256, overlap=0, device="cpu").image
    assert synthesize(labels, tiny_generator, tile=256, device="cpu").image.shape == (150, 173)
    tiled = synthesize(labels, tiny_generator, tile=64, overlap=32, device="cpu",
                       batch_size=batch_size).image
    diff = np.abs(tiled - whole)
    # outputs lie in [0, 1]: 0.01 is 2.5 grey levels of 255
    assert diff.max() < 0.01 and diff.mean() < 1e-3


def test_synthesis_writes_tiff_and_zarr_chunk_by_chunk(tmp_path, tiny_generator):
    import tifffile
    import zarr

    labels = blocks((100, 130), 3)
    ref = synthesize(labels, tiny_generator, device="cpu").image
    tif = synthesize(labels, tiny_generator, device="cpu", output=tmp_path / "g.tif")
    assert np.array_equal(tifffile.imread(tmp_path / "g.tif"), ref)
    assert np.array_equal(np.asarray(tif.image), ref)
    synthesize(labels, tiny_generator, device="cpu", output=tmp_path / "g.zarr", chunk=64)
    assert np.array_equal(zarr.open_group(str(tmp_path / "g.zarr"), mode="r")["0"][:], ref)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.tif", "g.zarr"]
    with pytest.raises(SemSegError, match="exists"):
        synthesize(labels, tiny_generator, output=tmp_path / "g.tif")


def test_rgb_uint8_output_and_stacks(tmp_path):
    import tifffile

    torch.manual_seed(0)
    gen = build_generator(2, 3, base=4, depth=2, dtype="uint8", tile=64, overlap=16)
    stack = np.stack([blocks((40, 50), 2, seed=s) for s in range(2)])
    image = synthesize(stack, gen, device="cpu", output=tmp_path / "rgb.tif").image
    assert image.shape == (2, 40, 50, 3) and image.dtype == np.uint8
    page = tifffile.TiffFile(tmp_path / "rgb.tif").pages[0]
    assert page.photometric == tifffile.PHOTOMETRIC.RGB
    planes = np.asarray(image)
    assert not np.array_equal(planes[0], planes[1])


def test_unconstrained_pixels_are_filled(tiny_generator):
    labels = blocks((64, 64), 3)
    labels[16:48, 16:48] = 0
    image = synthesize(labels, tiny_generator, device="cpu").image
    assert np.isfinite(image).all() and image.std() > 0


def test_cancelled_synthesis_leaves_nothing(tmp_path, tiny_generator):
    labels = blocks((200, 200), 3)
    job = iter_synthesize(labels, tiny_generator, output=tmp_path / "g.tif", device="cpu",
                          should_stop=lambda: True, tile=64, overlap=32)
    with pytest.raises(Cancelled):
        for _ in job:
            pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("labels, message", [
    (np.full((20, 20), 4, np.uint8), "uses class 4 but the generator knows classes 1..3"),
    (np.full((20, 20), -1, np.int16), "negative values"),
    (np.zeros((20, 20), np.float32), "give integer labels"),
    (np.zeros((20, 20, 3), np.uint8), "looks like a colour image"),
    (np.zeros(20, np.uint8), "give a 2D label image"),
])
def test_bad_label_maps_get_one_line(tiny_generator, labels, message):
    with pytest.raises(SemSegError, match=message) as err:
        synthesize(labels, tiny_generator)
    assert "\n" not in str(err.value)


def test_bad_synthesis_settings_get_one_line(tmp_path, tiny_generator):
    labels = blocks((20, 20), 3)
    for options, message in [({"tile": 4}, "smaller than this network's minimum"),
                             ({"chunk": 8}, "--chunk must be at least 64"),
                             ({"output": tmp_path / "x.png"}, "must end in"),
                             ({"output": tmp_path / "no" / "x.tif"}, "does not exist")]:
        with pytest.raises(SemSegError, match=message):
            synthesize(labels, tiny_generator, **options)
    with pytest.raises(TypeError, match="unknown option"):
        synthesize(labels, tiny_generator, tiles=3)
    assert SynthesizeSettings(seed=5).validated().seed == 5


# --------------------------------------------------------------------------- training


def _sampler(labels: np.ndarray, image: np.ndarray, size: int = 32) -> PairSampler:
    return PairSampler([ImageSource(image, None)], [ImageSource(labels, None)], size, [0.0],
                       [255.0], 3, (1, 1, 8), seed=0)


def test_gan_steps_lower_the_generator_loss():
    labels = blocks((96, 96), 3)
    sampler = _sampler(labels, painted(labels))
    torch.manual_seed(0)
    state = GanState.create(UNetGenerator(3, 2, 1, base=8, depth=3),
                            SegmentationDiscriminator(1, 3, base=8, depth=3), lr_g=2e-3,
                            lr_d=4e-3)
    batch = sampler.batch(4)
    first = gan_step(state, batch, 0)
    for step in range(1, 30):
        last = gan_step(state, batch, step)
    assert last["g_rec"] < 0.5 * first["g_rec"]
    assert last["g"] < first["g"]


def test_sampler_drops_boxes_for_the_generator_only():
    labels = blocks((64, 64), 3)
    sampler = _sampler(labels, painted(labels))
    sampler.dropout = 1.0
    batch = sampler.batch(4)
    assert batch.real.shape == (4, 1, 32, 32) and batch.noise.shape == (4, 2, 32, 32)
    assert (batch.labels > 0).all()
    assert ((batch.sparse == 0) & (batch.labels > 0)).any(dim=(1, 2)).all()
    kept = batch.sparse > 0
    assert torch.equal(batch.sparse[kept], batch.labels[kept])
    assert batch.real.min() >= -1 and batch.real.max() <= 1


def test_train_generator_writes_a_usable_generator(tmp_path):
    labels = blocks((64, 64), 3)
    image = painted(labels)
    events = []
    gen = train_generator(image, labels, steps=4, steps_per_epoch=2, crop_size=32, batch_size=2,
                          base_channels=4, depth=3, device="cpu", class_names=["a", "b", "c"],
                          output=tmp_path / "g.safetensors", callback=events.append)
    meta = read_generator_metadata(tmp_path / "g.safetensors")
    assert meta.class_names == ["a", "b", "c"] and meta.dtype == "uint8"
    assert meta.training["steps"] == 4 and meta.training["finished"]
    assert [e.step for e in events if e.epoch_end] == [2, 4]
    assert "loss_d" in events[1].metrics
    assert abs(meta.class_means[0][0] - 50) < 5 and abs(meta.class_means[1][0] - 200) < 5
    image_out = synthesize(labels, tmp_path / "g.safetensors", device="cpu").image
    assert image_out.dtype == np.uint8 and image_out.shape == labels.shape
    assert gen.metadata.training["steps"] == 4


def test_training_resumes_from_its_checkpoint(tmp_path):
    labels = blocks((64, 64), 3)
    image = painted(labels)
    out = tmp_path / "g.safetensors"
    options = {"steps_per_epoch": 2, "crop_size": 32, "batch_size": 2, "base_channels": 4,
               "depth": 3, "device": "cpu", "output": out}
    calls = []

    def stop_after_first_epoch(event):
        calls.append(event)
        return not event.epoch_end

    with pytest.raises(Cancelled):
        train_generator(image, labels, steps=6, callback=stop_after_first_epoch, **options)
    assert read_generator_metadata(out).training["steps"] == 2
    gen = train_generator(image, labels, steps=6, resume=True, **options)
    assert gen.metadata.training["steps"] == 6
    assert read_generator_metadata(out).training["epochs"] == 3


@pytest.mark.parametrize("make, message", [
    (lambda lab, img: (img[:30], lab), "they must cover the same pixels"),
    (lambda lab, img: (img, lab.astype(np.float32)), "give integer labels"),
    (lambda lab, img: ([img, img], [lab]), "2 image\\(s\\) but 1 label map"),
    (lambda lab, img: (img, np.zeros_like(lab)), "hold no class"),
    (lambda lab, img: ([img, np.stack([img] * 3, -1)], [lab, lab]), "channel"),
])
def test_bad_training_input_gets_one_line(make, message):
    labels = blocks((64, 64), 3)
    images, maps = make(labels, painted(labels))
    with pytest.raises(SemSegError, match=message) as err:
        train_generator(images, maps, steps=1, device="cpu")
    assert "\n" not in str(err.value)


def test_bad_generator_settings_get_one_line():
    for options, message in [({"crop_size": 30}, "multiple of the stride"),
                             ({"depth": 9}, "--depth must be 2 to 6"),
                             ({"label_dropout": 2.0}, "--label-dropout"),
                             ({"resume": True}, "--resume needs --checkpoint")]:
        with pytest.raises(SemSegError, match=message):
            GeneratorSettings(**options).validated()


def test_open_pairs_infers_the_channel_axis():
    labels = blocks((40, 50), 2)
    rgb = np.zeros((40, 50, 3), np.uint8)
    images, maps = open_pairs([rgb, np.moveaxis(rgb, -1, 0)], [labels, labels])
    assert [i.n_channels for i in images] == [3, 3]
    assert [m.plane_shape for m in maps] == [(40, 50)] * 2
