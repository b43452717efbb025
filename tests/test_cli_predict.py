"""``napari-semseg predict``: files and folders, resume summary, failures, cluster options."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

from napari_semseg import save_model, segment
from napari_semseg.cli import main
from napari_semseg.core.normalize import Normalization
from napari_semseg.core.writers import partial_path

OPTS = ["--tile", "96", "--overlap", "32", "--device", "cpu"]


@pytest.fixture
def model_file(tmp_path, tiny_model):
    tiny_model.metadata.normalization = Normalization("meanstd", [127.0], [1 / 70.0])
    return save_model(tiny_model, tmp_path / "model.safetensors")


@pytest.fixture
def folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        tifffile.imwrite(folder / f"{name}.tif", (rng.random((150, 140)) * 255).astype(np.uint8))
    return folder


def labels_of(path):
    if path.suffix == ".zarr":
        return zarr.open_group(str(path), mode="r")["0"][:]
    return tifffile.imread(path)


def test_single_file_to_zarr_and_tif(tmp_path, model_file, folder, capsys):
    for suffix in (".zarr", ".tif"):
        out = tmp_path / f"a{suffix}"
        assert main(["predict", str(folder / "a.tif"), "-m", str(model_file), "-o", str(out),
                     *OPTS]) == 0
        ref = segment(folder / "a.tif", model_file, tile=96, overlap=32, device="cpu")
        np.testing.assert_array_equal(labels_of(out), ref.labels)
    assert "->" in capsys.readouterr().out


def test_folder_then_resume_skips_complete_inputs(tmp_path, model_file, folder, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(folder), "-m", str(model_file), "-o", str(out), *OPTS]) == 0
    text = capsys.readouterr().out
    assert "summary: 3 done, 0 skipped (already complete), 0 failed" in text
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.zarr", "b_labels.zarr",
                                                     "c_labels.zarr"]
    # b is interrupted: its output is back to a partial store with some chunks done
    b = out / "b_labels.zarr"
    b.rename(partial_path(b))
    (partial_path(b) / "semseg_done").mkdir()
    (partial_path(b) / "semseg_done" / "0_0_0").touch()
    assert main(["predict", str(folder), "-m", str(model_file), "-o", str(out), "--resume",
                 *OPTS]) == 0
    captured = capsys.readouterr()
    assert "summary: 1 done, 2 skipped (already complete), 0 failed" in captured.out
    assert "resuming: 1 chunks already done" in captured.err
    ref = segment(folder / "b.tif", model_file, tile=96, overlap=32, device="cpu")
    np.testing.assert_array_equal(labels_of(b), ref.labels)
    # without --resume, complete outputs are refused
    assert main(["predict", str(folder), "-m", str(model_file), "-o", str(out), *OPTS]) == 2


def test_folder_run_continues_after_a_failed_input(tmp_path, model_file, folder, capsys):
    bad = folder / "d.zarr"
    z = zarr.open_array(str(bad), mode="w", shape=(150, 140), chunks=(64, 64), dtype=np.uint8,
                        zarr_format=2, compressor=None)
    z[:] = 5
    (bad / "1.1").write_bytes(b"broken")
    out = tmp_path / "out"
    code = main(["predict", str(folder), "-m", str(model_file), "-o", str(out), *OPTS])
    captured = capsys.readouterr()
    assert code == 1
    assert "summary: 3 done, 0 skipped (already complete), 1 failed" in captured.out
    assert "d.zarr: error: cannot read" in captured.err  # met before or while tiles are read
    assert not (out / "d_labels.zarr").exists()


def test_scheduler_address(tmp_path, model_file, folder, capsys):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        out = tmp_path / "a.zarr"
        code = main(["predict", str(folder / "a.tif"), "-m", str(model_file), "-o", str(out),
                     "--scheduler", cluster.scheduler_address, *OPTS])
        assert code == 0, capsys.readouterr().err
    ref = segment(folder / "a.tif", model_file, tile=96, overlap=32, device="cpu")
    np.testing.assert_array_equal(labels_of(out), ref.labels)


def test_unreachable_scheduler_is_one_line(tmp_path, model_file, folder, capsys, monkeypatch):
    from napari_semseg.cli import predict as cli_predict

    monkeypatch.setattr(cli_predict, "CONNECT_TIMEOUT", "2s")
    code = main(["predict", str(folder / "a.tif"), "-m", str(model_file), "-o",
                 str(tmp_path / "a.zarr"), "--scheduler", "tcp://127.0.0.1:1", *OPTS])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "cannot connect to the dask scheduler at tcp://127.0.0.1:1" in err
    assert not (tmp_path / "a.zarr").exists()


def test_scheduler_and_local_cluster_are_exclusive(tmp_path, model_file, folder, capsys):
    with pytest.raises(SystemExit):
        main(["predict", str(folder), "-m", str(model_file), "-o", str(tmp_path / "o"),
              "--scheduler", "tcp://x:1", "--local-cluster", "2"])


@pytest.mark.slow
def test_local_cluster_option(tmp_path, model_file, folder, capsys):
    out = tmp_path / "out"
    code = main(["predict", str(folder), "-m", str(model_file), "-o", str(out),
                 "--local-cluster", "2", *OPTS])
    assert code == 0, capsys.readouterr().err
    for name in ("a", "b", "c"):
        ref = segment(folder / f"{name}.tif", model_file, tile=96, overlap=32, device="cpu")
        np.testing.assert_array_equal(labels_of(out / f"{name}_labels.zarr"), ref.labels)
