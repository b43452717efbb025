"""dask.distributed: a LocalCluster with 2 worker processes gives the local run's output, and
worker-side failures reach the client as one clear SemSegError within seconds (issue 5)."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_semseg import build_model, iter_segment, save_model, segment
from napari_semseg.core import distributed as dist
from napari_semseg.core.errors import Cancelled, SemSegError
from napari_semseg.core.normalize import Normalization
from napari_semseg.core.prediction import distributed as driver
from napari_semseg.core.writers import partial_path

distributed = pytest.importorskip("distributed")

TILE = dict(tile=96, overlap=32, device="cpu")
FAIL_FAST = 60  # seconds: a worker failure must reach the client well within this


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=40)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    model = build_model("unet", "resnet18", in_channels=1, classes=3, encoder_depth=3,
                        decoder_channels=(32, 16, 8), tile=128, halo=16,
                        normalization=Normalization("meanstd", [127.0], [1 / 70.0]))
    model_file = save_model(model, folder / "model.safetensors")
    image = (np.random.default_rng(0).random((420, 390)) * 255).astype(np.uint8)
    tif = folder / "in.tif"
    tifffile.imwrite(tif, image, tile=(128, 128))
    return {"folder": folder, "model": model_file, "image": image, "tif": tif}


@pytest.fixture
def deadline():
    """Fail (instead of hanging the suite) if a test takes far too long."""
    def on_alarm(signum, frame):
        raise TimeoutError("test hung")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(240)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def on_workers(client, fn):
    """Run ``fn`` on every worker (pickled by value: defined in this test module)."""
    import cloudpickle

    import sys

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        client.run(fn)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def patch_run(kind: str):
    """On a worker: make the model raise (``kind``: 'boom' or 'oom'), or restore it."""
    from napari_semseg.core import predict

    if not hasattr(predict.TilePredictor, "_original_run"):
        predict.TilePredictor._original_run = predict.TilePredictor._run
    if kind == "restore":
        predict.TilePredictor._run = predict.TilePredictor._original_run
        return

    def broken(self, x, weights):
        if kind == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        raise RuntimeError("boom in the model")

    predict.TilePredictor._run = broken


def test_cluster_output_equals_the_local_run(client, files, tmp_path, deadline):
    local = segment(files["tif"], files["model"], output=tmp_path / "local.zarr",
                    probabilities=True, uncertainty=True, **TILE)
    events = []
    remote = segment(files["tif"], files["model"], output=tmp_path / "remote.zarr",
                     probabilities=True, uncertainty=True, client=client,
                     callback=events.append, **TILE)
    for key in ("0", "1", "probabilities/0", "uncertainty/0"):
        a = zarr.open_group(str(local.path), mode="r")[key][:]
        b = zarr.open_group(str(remote.path), mode="r")[key][:]
        np.testing.assert_array_equal(a, b, err_msg=key)
    assert not partial_path(remote.path).exists()
    assert "blocks on 2 worker threads" in events[0].message
    assert events[-1].done == events[-1].total == 49  # chunks of 64 px
    # chunks were written by both worker processes
    workers = {w for w in client.run(lambda: __import__("os").getpid()).values()}
    assert len(workers) == 2


def test_cluster_in_memory_result_and_model_object(client, files, deadline):
    from napari_semseg.core.models import load_model

    model = load_model(files["model"])
    local = segment(files["image"], model, probabilities=True, **TILE)
    remote = segment(files["image"], model, probabilities=True, client=client, **TILE)
    np.testing.assert_array_equal(local.labels, remote.labels)
    np.testing.assert_array_equal(local.probabilities, remote.probabilities)


def test_cluster_resumes_a_local_run(client, files, tmp_path, deadline):
    out = tmp_path / "seg.zarr"
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 10

    with pytest.raises(Cancelled):
        for _ in iter_segment(files["tif"], files["model"], output=out, should_stop=stop,
                              **TILE):
            pass
    done = len(list((partial_path(out) / "semseg_done").iterdir()))
    assert 0 < done < 49
    events = []
    segment(files["tif"], files["model"], output=out, resume=True, client=client,
            callback=events.append, **TILE)
    assert events[0].total == 49 - done and "resuming" in events[0].message
    ref = segment(files["image"], files["model"], **TILE)
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][:], ref.labels)


def expect_worker_error(client, match, **kwargs) -> float:
    start = time.monotonic()
    with pytest.raises(SemSegError, match=match) as info:
        segment(client=client, **kwargs)
    elapsed = time.monotonic() - start
    assert "\n" not in str(info.value)
    assert elapsed < FAIL_FAST, elapsed
    return elapsed


def test_bad_model_path_on_the_workers(client, files, tmp_path, monkeypatch, deadline):
    monkeypatch.setattr(driver, "model_path_for_workers",
                        lambda model: "/nonexistent/model.safetensors")
    out = tmp_path / "seg.zarr"
    expect_worker_error(client, r"worker tcp://.*model file /nonexistent/model.safetensors "
                        "does not exist on this worker", image=files["tif"],
                        model=files["model"], output=out, **TILE)
    assert not out.exists()


def test_corrupt_input_chunk_on_a_worker(client, files, tmp_path, deadline):
    path = tmp_path / "in.zarr"
    z = zarr.open_array(str(path), mode="w", shape=(600, 600), chunks=(50, 50),
                        dtype=np.uint8, zarr_format=2, compressor=None)
    z[:] = 9
    # a chunk none of the client's few checking reads (content digest, input check) touches:
    # the workers meet it
    (path / "3.3").write_bytes(b"not a chunk")
    out = tmp_path / "seg.zarr"
    expect_worker_error(client, r"worker tcp://.*cannot read rows", image=path,
                        model=files["model"], output=out, **TILE)
    assert not out.exists()


@pytest.mark.parametrize("kind,match", [("boom", "failed on plane 0.*RuntimeError: boom"),
                                        ("oom", "out of GPU memory even with one small tile")])
def test_exception_or_oom_in_the_model_on_a_worker(client, files, tmp_path, kind, match,
                                                   deadline):
    on_workers(client, lambda: patch_run(kind))
    try:
        out = tmp_path / "seg.zarr"
        expect_worker_error(client, match, image=files["tif"], model=files["model"], output=out,
                            **TILE)
        assert not out.exists()
    finally:
        on_workers(client, lambda: patch_run("restore"))


def test_cancel_stops_the_workers(client, files, tmp_path, deadline):
    out = tmp_path / "seg.zarr"
    with pytest.raises(Cancelled):
        segment(files["tif"], files["model"], output=out, client=client,
                callback=lambda e: False, **TILE)
    assert not out.exists()


def test_plan_blocks_prefers_few_square_blocks():
    chunks = [(i, j) for i in range(8) for j in range(8)]
    blocks = dist.plan_blocks(chunks, (8, 8), 4)
    assert len(blocks) == 4 and all(len(b) == 16 for b in blocks)
    assert sorted(c for b in blocks for c in b) == chunks
    blocks = dist.plan_blocks(chunks[:10], (8, 8), 100)
    assert sorted(c for b in blocks for c in b) == chunks[:10]
    assert dist.plan_blocks([], (8, 8), 4) == []


def test_worker_device_choice(monkeypatch):
    assert dist.worker_device("cpu", 3).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert str(dist.worker_device("auto", 5)) == "cuda:1"
    assert str(dist.worker_device("auto", 2)) == "cuda:2"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert str(dist.worker_device("auto", 5)) == "cuda:0"


def test_blocks_for_limits_recomputed_border_tiles():
    assert dist.blocks_for((4, 4), 1) == 1  # one worker thread: one block, nothing recomputed
    assert dist.blocks_for((4, 4), 2) == 2  # at least one block per thread
    n = dist.blocks_for((32, 32), 2)
    assert 4 <= n <= 8 and dist.recomputed_tile_ratio((32, 32), n) <= 1.10
    assert dist.recomputed_tile_ratio((8, 8), 1) == 1.0
    # 2x2 blocks: one shared tile row and column
    assert dist.recomputed_tile_ratio((8, 8), 4) == 81 / 64


def test_cluster_tiff_output_and_stack(client, files, tmp_path, deadline):
    stack = np.stack([files["image"][:200, :180], files["image"][200:400, :180]])
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, stack, tile=(64, 64))
    out = tmp_path / "stack_labels.tif"
    segment(src, files["model"], output=out, client=client, **TILE)
    ref = segment(stack, files["model"], **TILE)
    np.testing.assert_array_equal(tifffile.imread(out), ref.labels)
    assert not partial_path(out).exists()
