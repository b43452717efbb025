"""Cancel and failure: a run stops within one batch and never leaves a complete-looking output."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zarr

from napari_semseg import iter_segment, segment
from napari_semseg.core.errors import Cancelled
from napari_semseg.core.writers import partial_path

TILE = dict(tile=64, overlap=16, device="cpu")


@pytest.fixture
def image():
    return (np.random.default_rng(0).random((300, 280)) * 255).astype(np.uint8)


class CountForwards:
    """Counts forward passes of a model (and can raise on the n-th)."""

    def __init__(self, model, fail_at: int | None = None, error: Exception | None = None):
        self.calls = 0
        self.fail_at, self.error = fail_at, error
        self.handle = model.net.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise self.error or RuntimeError("boom in the model")

    def remove(self):
        self.handle.remove()


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "semseg-prefetch" and t.is_alive()]


def wait_threads_gone(timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while prefetch_threads() and time.monotonic() < end:
        time.sleep(0.02)
    return not prefetch_threads()


@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_callback_cancel_stops_within_one_batch_and_leaves_no_output(tiny_model, image,
                                                                     tmp_path, suffix):
    out = tmp_path / f"seg{suffix}"
    counter = CountForwards(tiny_model)
    seen = []

    def callback(event):
        seen.append(event)
        return not (event.done >= 2)

    try:
        with pytest.raises(Cancelled):
            segment(image, tiny_model, output=out, batch_size=2, callback=callback, **TILE)
    finally:
        counter.remove()
    assert seen[-1].done == 2
    assert counter.calls == 1  # the batch in flight when the user cancelled, nothing after
    assert not out.exists()
    assert partial_path(out).exists()  # kept for resume, under another name
    assert wait_threads_gone()


def test_should_stop_and_resume_gives_the_uninterrupted_result(tiny_model, image, tmp_path):
    out = tmp_path / "seg.zarr"
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] >= 12

    gen = iter_segment(image, tiny_model, output=out, should_stop=should_stop, **TILE)
    with pytest.raises(Cancelled):
        for _ in gen:
            pass
    assert not out.exists() and partial_path(out).exists()
    done_before = len(list((partial_path(out) / "semseg_done").iterdir()))
    assert done_before > 0
    events = []
    res = segment(image, tiny_model, output=out, resume=True, callback=events.append, **TILE)
    full = segment(image, tiny_model, **TILE)
    np.testing.assert_array_equal(res.labels[:], full.labels)
    assert "resuming" in events[0].message
    fresh_total = next(iter_segment(image, tiny_model, **TILE)).total
    assert events[0].total < fresh_total  # only the missing chunks were computed
    assert not partial_path(out).exists()


def test_closing_the_generator_cancels(tiny_model, image, tmp_path):
    out = tmp_path / "seg.zarr"
    counter = CountForwards(tiny_model)
    try:
        gen = iter_segment(image, tiny_model, output=out, **TILE)
        next(gen)
        next(gen)
        calls = counter.calls
        gen.close()
        assert counter.calls == calls
    finally:
        counter.remove()
    assert not out.exists() and partial_path(out).exists()
    assert wait_threads_gone()


@pytest.mark.parametrize("suffix", [".zarr", ".tif", None])
def test_failure_in_the_model_leaves_no_output(tiny_model, image, tmp_path, suffix):
    out = None if suffix is None else tmp_path / f"seg{suffix}"
    counter = CountForwards(tiny_model, fail_at=3)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            segment(image, tiny_model, output=out, **TILE)
    finally:
        counter.remove()
    assert counter.calls == 3
    if out is not None:
        assert not out.exists()
        assert not list(tmp_path.glob("seg_*"))  # no companion files either
    assert wait_threads_gone()


@pytest.mark.parametrize("stored_normalization", [True, False])
def test_failure_reading_the_input_is_a_clear_error(tiny_model, tmp_path, stored_normalization):
    from napari_semseg.core.errors import SemSegError
    from napari_semseg.core.normalize import Normalization

    if stored_normalization:  # the damaged chunk is met while tiles are read
        tiny_model.metadata.normalization = Normalization("meanstd", [0.0], [1.0])
    path = tmp_path / "in.zarr"
    z = zarr.open_array(str(path), mode="w", shape=(600, 600), chunks=(50, 50), dtype=np.uint8,
                        zarr_format=2, compressor=None)
    z[:] = 7
    # one damaged chunk, away from the few windows read before the run (content digest, input
    # check): met while tiles are read, or while estimating the normalization
    (path / "3.3").write_bytes(b"garbage")
    out = tmp_path / "seg.zarr"
    match = "cannot read rows" if stored_normalization else "cannot read"
    with pytest.raises(SemSegError, match=match):
        segment(path, tiny_model, output=out, **TILE)
    assert not out.exists()


def test_overwrite_keeps_the_old_output_until_the_new_one_is_complete(tiny_model, image,
                                                                      tmp_path):
    out = tmp_path / "seg.zarr"
    segment(image, tiny_model, output=out, **TILE)
    before = zarr.open_group(str(out), mode="r")["0"][:]
    with pytest.raises(Cancelled):
        segment(image[::-1].copy(), tiny_model, output=out, overwrite=True,
                callback=lambda e: e.done < 2, **TILE)
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][:], before)


def test_a_custom_sink_is_aborted_on_cancel_and_on_failure(tiny_model, image):
    class Sink:
        def __init__(self):
            self.chunks, self.calls = [], []

        def done_chunks(self):
            return set()

        def write(self, chunk):
            self.chunks.append(chunk)

        def finish(self):
            self.calls.append("finish")

        def abort(self):
            self.calls.append("abort")

    sink = Sink()
    with pytest.raises(Cancelled):
        segment(image, tiny_model, sink=sink, callback=lambda e: e.done < 20, batch_size=1,
                **TILE)
    assert sink.calls == ["abort"]
    # the chunks finished before the cancel were handed over (300 x 280 in 64-pixel chunks: 25)
    assert 0 < len(sink.chunks) < 25
    sink = Sink()
    counter = CountForwards(tiny_model, fail_at=4)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            segment(image, tiny_model, sink=sink, batch_size=1, **TILE)
    finally:
        counter.remove()
    assert sink.calls == ["abort"]


def test_a_prefetcher_finalized_in_another_thread_never_waits_for_its_reader():
    """The garbage collector may finalize an unclosed prefetcher in any thread, e.g. zarr's
    I/O thread while the reader waits on that very thread. Waiting for the reader there
    deadlocked cluster workers; it must only tell the reader to stop."""
    from napari_semseg.core.prediction.pipeline import prefetch

    served = threading.Event()  # "zarr's loop answers the read"

    def items():
        yield 1
        served.wait()  # the reader is blocked until the other thread serves it
        yield 2

    gen = prefetch(items(), depth=1)
    assert next(gen) == 1
    closer = threading.Thread(target=gen.close)  # as the garbage collector would, elsewhere
    closer.start()
    closer.join(timeout=10)
    try:
        assert not closer.is_alive(), "closing the prefetcher in another thread waited"
    finally:
        served.set()
    assert wait_threads_gone(), "the reader did not stop once served"


def test_closing_a_prefetcher_in_its_own_thread_waits_for_the_reader():
    from napari_semseg.core.prediction.pipeline import prefetch

    def items():
        for i in range(100):
            time.sleep(0.01)
            yield i

    gen = prefetch(items(), depth=2)
    assert next(gen) == 0
    gen.close()
    assert not prefetch_threads()  # already gone when close() returns
