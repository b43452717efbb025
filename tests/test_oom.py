"""Out-of-memory back-off (halve the batch, then the tile) and the GPU code paths that can run on
the CPU: exercised with a model that raises ``torch.cuda.OutOfMemoryError`` like CUDA does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_semseg import iter_segment, segment
from napari_semseg.core import predict
from napari_semseg.core.errors import SemSegError


class FakeOOM:
    """Raise CUDA's out-of-memory error for batches or tiles above a limit."""

    def __init__(self, model, max_batch: int = 1 << 30, max_side: int = 1 << 30,
                 error: type[Exception] = torch.cuda.OutOfMemoryError):
        self.max_batch, self.max_side, self.error = max_batch, max_side, error
        self.shapes: list[tuple[int, ...]] = []
        self.handle = model.net.register_forward_pre_hook(self)

    def __call__(self, module, args):
        shape = tuple(args[0].shape)
        self.shapes.append(shape)
        if shape[0] > self.max_batch or max(shape[-2:]) > self.max_side:
            if self.error is RuntimeError:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")

    def remove(self):
        self.handle.remove()


@pytest.fixture
def image():
    return (np.random.default_rng(0).random((200, 190)) * 255).astype(np.uint8)


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, RuntimeError])
def test_oom_halves_the_batch_and_continues(tiny_model, image, error):
    ref = segment(image, tiny_model, device="cpu", tile=96, overlap=32, batch_size=1,
                  probabilities=True)
    fake = FakeOOM(tiny_model, max_batch=2, error=error)
    try:
        res = segment(image, tiny_model, device="cpu", tile=96, overlap=32, batch_size=8,
                      probabilities=True)
    finally:
        fake.remove()
    batches = [s[0] for s in fake.shapes]
    assert batches[:3] == [8, 4, 2]  # halved twice, then remembered
    assert max(batches[3:]) <= 2
    np.testing.assert_array_equal(res.labels, ref.labels)
    assert np.abs(res.probabilities.astype(int) - ref.probabilities.astype(int)).max() <= 1


def test_oom_with_one_tile_halves_the_tile(tiny_model, image):
    fake = FakeOOM(tiny_model, max_side=64)
    events = []
    try:
        res = segment(image, tiny_model, device="cpu", tile=160, overlap=48, batch_size=1,
                      callback=events.append)
    finally:
        fake.remove()
    sides = [s[-1] for s in fake.shapes]
    assert sides[0] == 160 and sides[1] == 80 and sides[2] == 40
    assert any("out of memory: tile now 80" in e.message for e in events)
    assert any("out of memory: tile now 40" in e.message for e in events)
    assert res.labels.shape == image.shape and (res.labels > 0).all()
    # the result is that of a run with the smaller tile (same global grid and blending)
    ref = segment(image, tiny_model, device="cpu", tile=40, overlap=8, batch_size=1, chunk=128)
    np.testing.assert_array_equal(res.labels, ref.labels)


def test_oom_even_with_the_smallest_tile_is_a_clear_error(tiny_model, image, tmp_path):
    fake = FakeOOM(tiny_model, max_side=1)
    out = tmp_path / "seg.zarr"
    try:
        with pytest.raises(SemSegError, match="out of GPU memory even with one small tile"):
            segment(image, tiny_model, device="cpu", tile=128, overlap=32, output=out)
    finally:
        fake.remove()
    assert not out.exists()


def test_other_errors_are_not_mistaken_for_oom(tiny_model, image):
    fake = FakeOOM(tiny_model, max_side=1, error=ValueError)
    try:
        with pytest.raises(ValueError):
            segment(image, tiny_model, device="cpu", tile=96, overlap=32)
    finally:
        fake.remove()
    assert len(fake.shapes) == 1


def test_asynchronous_lookahead_gives_the_same_result(tiny_model, image, monkeypatch):
    """The GPU path launches batch k+1 before post-processing batch k; run it on the CPU."""
    ref = segment(image, tiny_model, device="cpu", tile=96, overlap=32, batch_size=2)
    original = predict.TilePredictor.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.asynchronous = True

    monkeypatch.setattr(predict.TilePredictor, "__init__", init)
    events = list(iter_segment(image, tiny_model, device="cpu", tile=96, overlap=32,
                               batch_size=2))
    assert events[-1].done == events[-1].total
    res = segment(image, tiny_model, device="cpu", tile=96, overlap=32, batch_size=2)
    np.testing.assert_array_equal(res.labels, ref.labels)


def test_auto_gpu_tile_and_batch_from_free_memory():
    gib = 2**30
    assert predict.auto_gpu_tile(80 * gib, 192, 32) == 2048 + 192
    assert predict.auto_gpu_tile(16 * gib, 192, 32) == 1024 + 192
    assert predict.auto_gpu_tile(1 * gib, 192, 32) == 512 + 192
    cuda = torch.device("cuda")
    assert predict.auto_batch_size(cuda, 1216, None, free_bytes=80 * gib) == 32
    assert predict.auto_batch_size(cuda, 1216, None, free_bytes=8 * gib) == 4
    assert predict.auto_batch_size(cuda, 2240, None, free_bytes=1 * gib) == 1
    assert predict.auto_batch_size(cuda, 1216, 3, free_bytes=80 * gib) == 3
    assert predict.auto_batch_size(torch.device("cpu"), 1216, None) == 1


@pytest.mark.gpu
def test_cuda_run_matches_cpu(tiny_model, image):
    ref = segment(image, tiny_model, device="cpu", tile=96, overlap=32)
    res = segment(image, tiny_model, device="cuda", tile=96, overlap=32, amp=False)
    assert (res.labels == ref.labels).mean() > 0.999
    amp = segment(image, tiny_model, device="cuda", tile=96, overlap=32, batch_size=4)
    assert (amp.labels == ref.labels).mean() > 0.98
    assert torch.cuda.memory_allocated() < 256 * 2**20  # freed after the run


@pytest.mark.gpu
def test_cuda_oom_back_off_for_real(tiny_model):
    """A batch far too large for the GPU still completes (batch halved until it fits)."""
    free, _ = torch.cuda.mem_get_info()
    side = 1024
    n = int(min(256, free // (side * side * 400) + 8))
    image = np.zeros((side, side * n), np.uint8)
    events = list(iter_segment(image, tiny_model, device="cuda", tile=side, overlap=64,
                               batch_size=n, amp=False))
    assert events[-1].done == events[-1].total
