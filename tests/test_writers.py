"""Sinks: partial stores, done markers, atomic completion, resume fingerprints, TIFF streaming."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr

from napari_semseg.core.errors import SemSegError
from napari_semseg.core.progress import ChunkResult
from napari_semseg.core.writers import (DONE_DIR, MemorySink, OutputLayout, TiffSink, ZarrSink,
                                        check_output, companion_paths, is_complete, make_sink,
                                        partial_path)


def layout(shape=(200, 150), planes=(), chunk=64, probabilities=True, uncertainty=True):
    return OutputLayout(planes, shape, chunk, 3, probabilities, uncertainty)


def chunks_of(lay: OutputLayout, seed: int = 0):
    rng = np.random.default_rng(seed)
    h, w = lay.plane_shape
    n_planes = int(np.prod(lay.plane_dims)) if lay.plane_dims else 1
    for p in range(n_planes):
        for y in range(0, h, lay.chunk):
            for x in range(0, w, lay.chunk):
                r, c = slice(y, min(h, y + lay.chunk)), slice(x, min(w, x + lay.chunk))
                hh, ww = r.stop - r.start, c.stop - c.start
                yield ChunkResult(p, (r, c), rng.integers(1, 4, (hh, ww)).astype(np.uint8),
                                  rng.integers(0, 256, (3, hh, ww)).astype(np.uint8),
                                  rng.integers(0, 256, (hh, ww)).astype(np.uint8))


def info(fp="a"):
    return {"class_names": ["a", "b", "c"], "class_colors": ["#ff0000", "#00ff00", "#0000ff"],
            "fingerprint": {"run": fp}}


def test_memory_sink_assembles_chunks():
    lay = layout(planes=(2,))
    sink = MemorySink(lay)
    parts = list(chunks_of(lay))
    for ch in parts:
        sink.write(ch)
    res = sink.finish()
    for ch in parts:
        np.testing.assert_array_equal(res.labels[(ch.plane,) + ch.region], ch.labels)
        np.testing.assert_array_equal(res.probabilities[(ch.plane, slice(None)) + ch.region],
                                      ch.probabilities)


def test_zarr_sink_writes_under_partial_then_renames(tmp_path):
    out = tmp_path / "x.zarr"
    lay = layout()
    sink = ZarrSink(out, lay, info())
    parts = list(chunks_of(lay))
    for ch in parts[:3]:
        sink.write(ch)
    assert not out.exists() and partial_path(out).exists()
    assert sink.done_chunks() == {(0, 0, 0), (0, 0, 1), (0, 0, 2)}
    assert not is_complete(out)
    for ch in parts[3:]:
        sink.write(ch)
    res = sink.finish()
    assert is_complete(out) and not partial_path(out).exists()
    assert not (out / DONE_DIR).exists()
    for ch in parts:
        np.testing.assert_array_equal(res.labels[ch.region], ch.labels)
        np.testing.assert_array_equal(res.uncertainty[ch.region], ch.uncertainty)
    attrs = json.loads((out / ".zattrs").read_text())
    assert attrs["napari_semseg"]["complete"] is True
    assert attrs["image-label"]["colors"][0] == {"label-value": 1, "rgba": [255, 0, 0, 255]}
    assert len(attrs["multiscales"][0]["datasets"]) == 3  # 200 -> 100 -> 50 for chunk 64


def killed(sink) -> None:
    """What ``kill -9`` leaves of a run: its lock file, naming a process that is gone."""
    import json
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    sink.lock.path.write_text(json.dumps({"pid": int(gone.stdout),
                                          "host": socket.gethostname()}))
    sink.lock.held = False


def test_zarr_sink_resume_keeps_done_chunks_and_checks_the_fingerprint(tmp_path):
    out = tmp_path / "x.zarr"
    lay = layout()
    parts = list(chunks_of(lay))
    sink = ZarrSink(out, lay, info())
    for ch in parts[:4]:
        sink.write(ch)
    killed(sink)
    again = ZarrSink(out, lay, info(), resume=True)
    assert len(again.done_chunks()) == 4
    np.testing.assert_array_equal(again.labels[parts[0].region], parts[0].labels)
    killed(again)
    with pytest.raises(SemSegError, match="cannot resume"):
        ZarrSink(out, lay, info("other"), resume=True)
    fresh = ZarrSink(out, lay, info("other"))  # without resume: start over
    assert fresh.done_chunks() == set()


def test_worker_attach_needs_the_shared_store(tmp_path):
    out = tmp_path / "x.zarr"
    lay = layout()
    with pytest.raises(SemSegError, match="shared by the client and all workers"):
        ZarrSink(out, lay, {}, attach=True)
    ZarrSink(out, lay, info())
    worker = ZarrSink(out, lay, {}, attach=True)
    ch = next(chunks_of(lay))
    worker.write(ch)
    assert worker.done_chunks() == {(0, 0, 0)}


def test_finish_is_idempotent_after_a_kill_between_steps(tmp_path):
    """A run killed during finish (pyramid written, not yet renamed) completes on resume."""
    out = tmp_path / "x.zarr"
    lay = layout()
    sink = ZarrSink(out, lay, info())
    for ch in chunks_of(lay):
        sink.write(ch)
    sink._build_pyramid()  # the kill happened here
    killed(sink)
    again = ZarrSink(out, lay, info(), resume=True)
    assert len(again.done_chunks()) == 12
    res = again.finish()
    assert is_complete(out) and res.labels.shape == (200, 150)


def test_tiff_sink_streams_tiles_and_writes_companions_first(tmp_path, monkeypatch):
    out = tmp_path / "x.tif"
    lay = layout(planes=(2,))
    geo = [(33550, 12, 3, (1.0, 1.0, 0.0), True)]
    sink = TiffSink(out, lay, info(), geo_tags=geo)
    parts = list(chunks_of(lay))
    for ch in parts:
        sink.write(ch)
    order = []
    original = TiffSink._write_tiff

    def spy(self, arr, target, axes, **kwargs):
        order.append(target.name)
        assert not out.exists()  # the labels file appears last
        return original(self, arr, target, axes, **kwargs)

    monkeypatch.setattr(TiffSink, "_write_tiff", spy)
    res = sink.finish()
    assert order == ["x_probabilities.tif", "x_uncertainty.tif", "x.tif"]
    labels = tifffile.imread(out)
    assert labels.shape == (2, 200, 150)
    for ch in parts:
        np.testing.assert_array_equal(labels[(ch.plane,) + ch.region], ch.labels)
    probs = tifffile.imread(companion_paths(out)["probabilities"])
    assert probs.shape == (2, 3, 200, 150)
    with tifffile.TiffFile(out) as tf:
        assert tf.pages.first.tags[33550].value == (1.0, 1.0, 0.0)
        assert tf.pages.first.is_tiled
    assert not partial_path(out).exists()
    np.testing.assert_array_equal(np.asarray(res.labels[:]), labels)


def test_check_output_rules(tmp_path):
    out = tmp_path / "x.zarr"
    check_output(out, overwrite=False)
    out.mkdir()
    with pytest.raises(SemSegError, match="exists"):
        check_output(out, overwrite=False)
    check_output(out, overwrite=True)
    check_output(out, overwrite=False, resume=True)  # complete: nothing to do
    partial_path(out).mkdir()
    with pytest.raises(SemSegError, match="exists"):
        check_output(out, overwrite=False, resume=True)
    with pytest.raises(SemSegError, match="must end in"):
        check_output(tmp_path / "x.png", overwrite=False)
    with pytest.raises(SemSegError, match="does not exist"):
        check_output(tmp_path / "nope" / "x.zarr", overwrite=False)
    assert partial_path(tmp_path / "y.tif").name == "y.tif.zarr.partial"


def test_make_sink_picks_by_suffix(tmp_path):
    lay = layout()
    assert isinstance(make_sink(None, lay, info()), MemorySink)
    assert isinstance(make_sink(tmp_path / "a.ome.zarr", lay, info()), ZarrSink)
    assert isinstance(make_sink(tmp_path / "a.tiff", lay, info()), TiffSink)
    arr = zarr.open_group(str(partial_path(tmp_path / "a.ome.zarr")), mode="r")["0"]
    assert arr.chunks == (64, 64) and arr.dtype == np.uint8


def test_pyramid_levels_are_written_with_each_chunk(tmp_path):
    out = tmp_path / "big.zarr"
    lay = layout(shape=(1500, 1300), chunk=512, probabilities=False, uncertainty=False)
    sink = ZarrSink(out, lay, info())
    assert sink._incremental_levels() == [1]  # 256-px chunks; 128 px would be too small
    parts = list(chunks_of(lay))
    full = np.zeros((1500, 1300), np.uint8)
    for ch in parts:
        sink.write(ch)
        full[ch.region] = ch.labels
    level1 = zarr.open_group(str(partial_path(out)), mode="r")["1"]
    assert level1.chunks == (256, 256)
    np.testing.assert_array_equal(level1[:], full[::2, ::2])  # complete before finish
    res = sink.finish()
    root = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(root["1"][:], full[::2, ::2])
    np.testing.assert_array_equal(root["2"][:], full[::4, ::4])
    assert [d["path"] for d in root.attrs["multiscales"][0]["datasets"]] == ["0", "1", "2"]
    assert res.labels.shape == (1500, 1300)
