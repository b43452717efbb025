"""Tiled prediction: outputs (numpy, OME-Zarr, GeoTIFF), stacks, channels, probabilities,
rescaling, progress events, batching and the whole-image equivalence of a single tile."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_semseg import build_model, iter_segment, segment
from napari_semseg.core.device import cpu_has_bf16, precision_name
from napari_semseg.core.errors import SemSegError
from napari_semseg.core.predict import default_overlap_for, plan_tiles
from napari_semseg.core.io import open_image
from napari_semseg.core.normalize import estimate_normalization
from napari_semseg.core.settings import PredictSettings
from napari_semseg.core.tta import dihedral, undo_dihedral


@pytest.fixture
def rgb_model():
    torch.manual_seed(1)
    return build_model("unet", "resnet18", in_channels=3, classes=4, encoder_depth=3,
                       decoder_channels=(32, 16, 8), tile=96, halo=8)


def whole_image_probabilities(model, image: np.ndarray) -> np.ndarray:
    """Reference: one forward pass over the whole image, reflect-padded to the stride."""
    stride = model.metadata.stride
    x = image.astype(np.float32)
    if x.ndim == 2:
        x = x[None]
    h, w = x.shape[-2:]
    ph, pw = -h % stride, -w % stride
    x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect")
    norm = model.metadata.normalization or estimate_normalization(open_image(image))
    t = torch.from_numpy(x)[None]
    with torch.inference_mode():
        t = norm.apply_torch(t)
        p = model(t).softmax(1)[0, :, :h, :w]
    return p.numpy()


def test_defaults_are_chunk_plus_overlap(tiny_model, grey_image):
    settings = PredictSettings()
    source = open_image(grey_image)
    plan = plan_tiles(source, tiny_model, settings, torch.device("cpu"))
    stride = tiny_model.metadata.stride
    assert plan.overlap == default_overlap_for(stride, tiny_model.metadata.halo) == 6 * stride
    assert plan.chunk == tiny_model.metadata.tile == 128
    assert plan.tile == plan.chunk + plan.overlap
    assert plan.margin == plan.overlap // 4 and plan.batch_size == 1
    big = build_model("unet", "resnet18", 1, 2)
    plan = plan_tiles(open_image(np.zeros((2000, 2000), np.uint8)), big, settings,
                      torch.device("cpu"))
    assert (plan.tile, plan.overlap, plan.chunk) == (1216, 192, 1024)


def test_numpy_output_labels_probabilities_uncertainty(tiny_model, grey_image):
    res = segment(grey_image, tiny_model, device="cpu", probabilities=True, uncertainty=True)
    k = tiny_model.metadata.classes
    assert res.labels.shape == grey_image.shape and res.labels.dtype == np.uint8
    assert set(np.unique(res.labels)) <= set(range(1, k + 1))
    assert res.probabilities.shape == (k,) + grey_image.shape
    assert res.probabilities.dtype == np.uint8 and res.uncertainty.dtype == np.uint8
    total = res.probabilities.astype(int).sum(0)
    assert np.abs(total - 255).max() <= k  # quantized probabilities sum to 1
    # labels are the argmax of the probabilities (+1)
    p = res.probabilities.astype(int)
    top = np.take_along_axis(p, (res.labels.astype(int) - 1)[None], 0)[0]
    assert (top >= p.max(0) - 1).all()
    # uncertainty is the normalized entropy of the probabilities
    q = np.clip(p / 255.0, 1e-7, 1)
    ent = -(q * np.log(q)).sum(0) / np.log(k)
    assert np.abs(res.uncertainty / 255.0 - ent).max() < 0.05


def test_single_tile_equals_whole_image_forward(tiny_model, grey_image):
    # fp32 (amp=False): exact up to the uint8 quantization
    res = segment(grey_image, tiny_model, device="cpu", tile=512, probabilities=True, amp=False)
    ref = whole_image_probabilities(tiny_model, grey_image)
    assert np.abs(res.probabilities / 255.0 - ref).max() <= 1 / 255 + 1e-4
    agree = (res.labels == ref.argmax(0) + 1).mean()
    assert agree > 0.999


def test_segment_with_tta_matches_the_whole_image_average(tiny_model, grey_image):
    res = segment(grey_image, tiny_model, device="cpu", tile=512, amp=False, tta=8,
                  probabilities=True)
    plain = segment(grey_image, tiny_model, device="cpu", tile=512, amp=False,
                    probabilities=True)
    # the reference: the mean of 8 whole-image passes over transformed copies of the padded image
    stride = tiny_model.metadata.stride
    h, w = grey_image.shape
    x = np.pad(grey_image.astype(np.float32), ((0, -h % stride), (0, -w % stride)), mode="reflect")
    norm = estimate_normalization(open_image(grey_image))
    with torch.inference_mode():
        t = norm.apply_torch(torch.from_numpy(x)[None, None])
        ref = torch.stack([undo_dihedral(tiny_model(dihedral(t, k)).softmax(1), k)
                           for k in range(8)]).mean(0)[0, :, :h, :w].numpy()
    assert np.abs(res.probabilities / 255.0 - ref).max() <= 1 / 255 + 1e-4
    assert np.abs(res.probabilities.astype(int) - plain.probabilities.astype(int)).max() > 2


@pytest.mark.skipif(not cpu_has_bf16(), reason="the CPU has no native bf16")
def test_bf16_on_cpus_that_compute_it_is_close_to_fp32(tiny_model, grey_image):
    fast = segment(grey_image, tiny_model, device="cpu", tile=512, probabilities=True)
    exact = segment(grey_image, tiny_model, device="cpu", tile=512, probabilities=True, amp=False)
    diff = np.abs(fast.probabilities.astype(int) - exact.probabilities.astype(int))
    assert 0 < diff.max() <= 12  # bf16 did run (not identical), and stays close
    assert (fast.labels == exact.labels).mean() > 0.99


def test_precision_names():
    cpu = torch.device("cpu")
    assert precision_name(cpu, False) == "fp32"
    assert precision_name(cpu, True) == ("bf16" if cpu_has_bf16() else "fp32")


def test_batches_give_the_same_result(tiny_model, grey_image):
    a = segment(grey_image, tiny_model, device="cpu", tile=96, overlap=32, batch_size=1,
                probabilities=True)
    b = segment(grey_image, tiny_model, device="cpu", tile=96, overlap=32, batch_size=3,
                probabilities=True)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert np.abs(a.probabilities.astype(int) - b.probabilities.astype(int)).max() <= 1


def test_zarr_output_is_ome_with_pyramid(tiny_model, tmp_path):
    rng = np.random.default_rng(3)
    image = (rng.random((300, 270)) * 255).astype(np.uint8)
    out = tmp_path / "seg.zarr"
    res = segment(image, tiny_model, device="cpu", output=out, probabilities=True,
                  uncertainty=True)
    ref = segment(image, tiny_model, device="cpu", probabilities=True, uncertainty=True)
    assert res.path == out and out.is_dir()
    assert not (tmp_path / "seg.zarr.partial").exists()
    root = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(root["0"][:], ref.labels)
    np.testing.assert_array_equal(root["probabilities/0"][:], ref.probabilities)
    np.testing.assert_array_equal(root["uncertainty/0"][:], ref.uncertainty)
    attrs = root.attrs.asdict()
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["y", "x"]
    levels = [d["path"] for d in ms["datasets"]]
    assert levels == ["0", "1", "2"]  # 300 -> 150 -> 75 (chunk 128)
    np.testing.assert_array_equal(root["1"][:], ref.labels[::2, ::2])
    np.testing.assert_array_equal(root["2"][:], ref.labels[::4, ::4])
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [2.0, 2.0]
    colors = attrs["image-label"]["colors"]
    assert [c["label-value"] for c in colors] == [1, 2, 3]
    names = [p["name"] for p in attrs["image-label"]["properties"]]
    assert names == tiny_model.metadata.class_names
    info = attrs["napari_semseg"]
    assert info["complete"] is True and info["settings"]["tile"] == 176
    assert not (out / "semseg_done").exists()
    assert root["0"].chunks == (128, 128)


def make_geotiff(path, image):
    extratags = [
        (33550, "d", 3, (0.5, 0.5, 0.0), True),  # ModelPixelScale
        (33922, "d", 6, (0.0, 0.0, 0.0, 55.2, 25.1, 0.0), True),  # ModelTiepoint
        (34735, "H", 8, (1, 1, 0, 1, 1024, 0, 1, 2), True),  # GeoKeyDirectory
    ]
    tifffile.imwrite(path, image, tile=(64, 64), extratags=extratags)


def test_tiff_output_copies_geotiff_tags(rgb_model, tmp_path):
    rng = np.random.default_rng(4)
    image = (rng.random((200, 230, 3)) * 255).astype(np.uint8)
    src = tmp_path / "in.tif"
    make_geotiff(src, image)
    out = tmp_path / "out.tif"
    res = segment(src, rgb_model, device="cpu", output=out, probabilities=True)
    ref = segment(image, rgb_model, device="cpu", probabilities=True)
    np.testing.assert_array_equal(tifffile.imread(out), ref.labels)
    prob_file = tmp_path / "out_probabilities.tif"
    np.testing.assert_array_equal(tifffile.imread(prob_file), ref.probabilities)
    with tifffile.TiffFile(out) as tf:
        page = tf.pages.first
        assert tf.is_bigtiff and page.is_tiled
        assert page.tags[33550].value == (0.5, 0.5, 0.0)
        assert page.tags[33922].value == (0.0, 0.0, 0.0, 55.2, 25.1, 0.0)
        assert tuple(page.tags[34735].value) == (1, 1, 0, 1, 1024, 0, 1, 2)
    np.testing.assert_array_equal(np.asarray(res.labels[:]), ref.labels)
    assert not list(tmp_path.glob("*.partial"))


def test_stack_is_segmented_plane_by_plane(tiny_model, tmp_path):
    rng = np.random.default_rng(5)
    stack = (rng.random((3, 150, 140)) * 255).astype(np.uint8)
    res = segment(stack, tiny_model, device="cpu", tile=96, overlap=32, probabilities=True)
    assert res.labels.shape == stack.shape
    assert res.probabilities.shape == (3, 3, 150, 140)
    for z in range(3):
        one = segment(stack[z], tiny_model, device="cpu", tile=96, overlap=32,
                      probabilities=True)
        np.testing.assert_array_equal(res.labels[z], one.labels)
        np.testing.assert_array_equal(res.probabilities[z], one.probabilities)
    out = tmp_path / "stack.zarr"
    segment(stack, tiny_model, device="cpu", tile=96, overlap=32, output=out)
    root = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(root["0"][:], res.labels)
    axes = root.attrs["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["z", "y", "x"]


def test_channel_axis_first_or_last_gives_the_same_result(rgb_model):
    rng = np.random.default_rng(6)
    hwc = (rng.random((120, 130, 3)) * 255).astype(np.uint8)
    a = segment(hwc, rgb_model, device="cpu")
    b = segment(np.moveaxis(hwc, -1, 0).copy(), rgb_model, device="cpu", channel_axis=0)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert set(np.unique(a.labels)) <= {1, 2, 3, 4}


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32, np.float64])
def test_pixel_types(tiny_model, grey_image, dtype):
    res = segment(grey_image.astype(dtype), tiny_model, device="cpu")
    ref = segment(grey_image, tiny_model, device="cpu")
    assert (res.labels == ref.labels).mean() > 0.999


def test_pixel_size_rescales_tiles_for_the_network(tmp_path):
    torch.manual_seed(2)
    model = build_model("unet", "resnet18", 1, 2, encoder_depth=3, decoder_channels=(16, 8, 8),
                        tile=96, halo=8, pixel_size=1.0)
    seen = []
    hook = model.net.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-2:]))
    image = (np.random.default_rng(7).random((100, 90)) * 255).astype(np.uint8)
    try:
        res = segment(image, model, device="cpu", pixel_size=2.0, tile=64, overlap=16)
        assert res.labels.shape == image.shape
        assert seen and all(s[0] >= 2 * 64 - 8 and s[0] % 8 == 0 for s in seen)
        seen.clear()
        segment(image, model, device="cpu", pixel_size=1.0, tile=64, overlap=16)
        assert all(tuple(s) == (64, 64) for s in seen)
    finally:
        hook.remove()


def test_progress_events_count_tiles_and_report_every_chunk_once(tiny_model):
    rng = np.random.default_rng(8)
    image = (rng.random((330, 300)) * 255).astype(np.uint8)
    events = []
    gen = iter_segment(image, tiny_model, device="cpu", tile=96, overlap=32, batch_size=2)
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    total = events[0].total
    assert events[0].done == 0 and total > 4
    dones = [e.done for e in events]
    assert dones == sorted(dones) and dones[-1] == total
    assert all(e.total == total for e in events)
    covered = np.zeros(image.shape, int)
    for e in events:
        for ch in e.chunks:
            r, c = ch.region
            covered[r, c] += 1
            np.testing.assert_array_equal(ch.labels, result.labels[r, c])
    assert (covered == 1).all()
    # chunks are reported while the run goes on, not all at the end
    first_chunk = next(i for i, e in enumerate(events) if e.chunks)
    assert first_chunk < len(events) // 2


def test_unknown_option_and_bad_values(tiny_model, grey_image):
    with pytest.raises(TypeError, match="unknown option"):
        segment(grey_image, tiny_model, device="cpu", tiles=3)
    with pytest.raises(SemSegError, match="--batch-size"):
        segment(grey_image, tiny_model, device="cpu", batch_size=0)


def test_zarr_input_read_lazily(tiny_model, tmp_path):
    rng = np.random.default_rng(9)
    image = (rng.random((260, 250)) * 255).astype(np.uint8)
    z = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=image.shape,
                        chunks=(64, 64), dtype=np.uint8, zarr_format=2)
    z[:] = image
    a = segment(tmp_path / "in.zarr", tiny_model, device="cpu")
    b = segment(image, tiny_model, device="cpu")
    np.testing.assert_array_equal(a.labels, b.labels)
    meta = json.loads((tmp_path / "in.zarr" / ".zarray").read_text())
    assert meta["chunks"] == [64, 64]


def test_argmax_classes_matches_argmax_with_ties():
    from napari_semseg.core.predict import argmax_classes

    for k in (2, 3, 7):
        acc = torch.rand(k, 33, 40)
        acc[:, 0, :20] = 0.5  # ties: the lower class wins, as with argmax
        np.testing.assert_array_equal(argmax_classes(acc).numpy(), acc.argmax(0).numpy() + 1)
    assert argmax_classes(torch.rand(300, 4, 4)).dtype == torch.int32


def test_model_digest_is_cached_until_weights_change(tiny_model):
    from napari_semseg.core.predict import model_digest

    a = model_digest(tiny_model)
    assert model_digest(tiny_model) == a
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)
    assert model_digest(tiny_model) != a


class ConstantPredictor:
    """Stands in for TilePredictor: class 2 everywhere, blended with the tile weights."""

    device = torch.device("cpu")
    classes = 2
    asynchronous = False

    def __init__(self):
        self.tiles_seen = 0

    def weight(self, key, make):
        return torch.from_numpy(np.ascontiguousarray(make()))

    def predict(self, batch, weights):
        self.tiles_seen += batch.shape[0]
        p = torch.tensor([0.25, 0.75]).view(1, 2, 1, 1).repeat(batch.shape[0], 1,
                                                                 *batch.shape[-2:])
        return p * torch.stack(weights)[:, None]


@pytest.mark.parametrize("shape", [(200, 6000), (6000, 200)])
def test_pending_bands_stay_bounded_for_long_images(shape):
    """Chunks finish while the run goes on: between batches, the chunks holding pending bands
    never exceed about one row (or column) of chunks across the shorter side."""
    from napari_semseg.core.predict import iter_plane
    from napari_semseg.core.tiling import TileGrid

    image = np.zeros(shape, np.uint8)
    source = open_image(image)
    grid = TileGrid.plan(shape, 64, 32, 8, chunk=32)
    pred = ConstantPredictor()
    started, finished = set(), set()
    order = grid.order(grid.tiles())
    done = worst = 0
    for n, chunks in iter_plane(source, 0, grid, pred, set(grid.chunks()), 4, prefetch=0):
        for t in order[done:done + n]:
            started.update(grid.chunks_of_tile(*t))
        done += n
        finished.update((c.region[0].start // 32, c.region[1].start // 32) for c in chunks)
        for ch in chunks:
            assert (ch.labels == 2).all()
        worst = max(worst, len(started - finished))
    assert finished == set(grid.chunks())
    short = min(grid.chunk_counts)
    assert worst <= 3 * short + 4, (worst, grid.chunk_counts)


class RecordingSink:
    """A custom sink: keeps every chunk it receives and records finish/abort calls."""

    def __init__(self, done=()):
        self.chunks, self.calls, self.done = [], [], set(done)
        self.threads = set()

    def done_chunks(self):
        return set(self.done)

    def write(self, chunk):
        import threading

        self.threads.add(threading.current_thread().name)
        self.chunks.append(chunk)

    def finish(self):
        self.calls.append("finish")
        return "my result"

    def abort(self):
        self.calls.append("abort")


def test_a_custom_sink_receives_every_chunk_then_finish(tiny_model, grey_image):
    from napari_semseg.core.writers import Sink

    ref = segment(grey_image, tiny_model, device="cpu", tile=96, overlap=32, probabilities=True)
    sink = RecordingSink()
    assert isinstance(sink, Sink)  # the protocol: done_chunks, write, finish, abort
    result = segment(grey_image, tiny_model, device="cpu", tile=96, overlap=32,
                     probabilities=True, sink=sink)
    assert result == "my result" and sink.calls == ["finish"]
    regions = [(c.region[0].start, c.region[1].start) for c in sink.chunks]
    assert len(regions) == len(set(regions)) == 3 * 3  # 150 x 170 in chunks of 64: each once
    labels = np.zeros_like(ref.labels)
    for c in sink.chunks:
        labels[c.region] = c.labels
        np.testing.assert_array_equal(c.probabilities, ref.probabilities[(slice(None),) +
                                                                         c.region])
    np.testing.assert_array_equal(labels, ref.labels)
    assert sink.threads == {"semseg-writer"}  # written behind the computation


def test_a_custom_sink_skips_the_chunks_it_already_has(tiny_model, grey_image):
    sink = RecordingSink(done={(0, 0, 0), (0, 2, 1)})
    segment(grey_image, tiny_model, device="cpu", tile=96, overlap=32, sink=sink)
    got = [(c.region[0].start // 64, c.region[1].start // 64) for c in sink.chunks]
    assert sorted(got) == sorted({(i, j) for i in range(3) for j in range(3)} - {(0, 0), (2, 1)})


def test_sink_and_output_together_are_refused_before_any_work(tiny_model, grey_image, tmp_path):
    from napari_semseg.core.errors import SemSegError

    sink = RecordingSink()
    with pytest.raises(SemSegError, match="either output .* or sink"):
        segment(grey_image, tiny_model, device="cpu", output=tmp_path / "x.zarr", sink=sink)
    assert sink.calls == [] and sink.chunks == [] and not list(tmp_path.iterdir())
