"""The napari reader (lazy TIFF/OME-TIFF/GeoTIFF, zarr/OME-Zarr) and the Labels writer."""

from __future__ import annotations

import numpy as np
import pytest

GEO = [  # a plausible GeoTIFF: pixel scale, tie point, key directory (EPSG:32640)
    (33550, 12, 3, (0.5, 0.5, 0.0), True),
    (33922, 12, 6, (0.0, 0.0, 0.0, 500000.0, 2800000.0, 0.0), True),
    (34735, 3, 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32640), True),
]


def _reader():
    from napari_semseg._napari.reader import napari_get_reader

    return napari_get_reader


def test_reader_declines_files_it_does_not_handle(tmp_path):
    get = _reader()
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.tif").write_bytes(b"this is not a tiff")
    (tmp_path / "folder").mkdir()
    import tifffile

    tifffile.imwrite(tmp_path / "ok.tif", np.zeros((8, 8), np.uint8))
    for p in ("a.png", "notes.txt", "fake.tif", "folder", "missing.tif"):
        assert get(str(tmp_path / p)) is None, p
    assert get([str(tmp_path / "ok.tif"), str(tmp_path / "notes.txt")]) is None
    assert get(str(tmp_path / "ok.tif")) is not None


def test_reader_opens_tiff_lazily_with_geotiff_tags(tmp_path):
    import dask.array as da
    import tifffile

    data = np.arange(300 * 200, dtype=np.uint16).reshape(300, 200)
    path = tmp_path / "geo.tif"
    tifffile.imwrite(path, data, tile=(64, 64), extratags=GEO)
    (layer,) = _reader()(str(path))(str(path))
    arr, kwargs, kind = layer
    assert kind == "image" and isinstance(arr, da.Array)
    assert np.array_equal(arr[100:110, 50:60].compute(), data[100:110, 50:60])
    tags = {t[0]: t for t in kwargs["metadata"]["napari_semseg"]["geo_tags"]}
    assert set(tags) == {33550, 33922, 34735}
    assert tuple(tags[33550][3]) == (0.5, 0.5, 0.0)


def test_reader_opens_a_pyramidal_ome_tiff_as_multiscale(tmp_path):
    import dask.array as da
    import tifffile

    base = np.random.default_rng(0).integers(0, 255, (512, 768), dtype=np.uint8)
    path = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(base, tile=(128, 128), subifds=2, metadata={"axes": "YX", "PhysicalSizeX": 0.25,
                                                           "PhysicalSizeY": 0.25})
        tw.write(base[::2, ::2], tile=(128, 128), subfiletype=1)
        tw.write(base[::4, ::4], tile=(128, 128), subfiletype=1)
    (layer,) = _reader()(str(path))(str(path))
    levels, kwargs, kind = layer
    assert kind == "image" and kwargs["multiscale"] is True
    assert [lv.shape for lv in levels] == [(512, 768), (256, 384), (128, 192)]
    assert all(isinstance(lv, da.Array) for lv in levels)
    assert np.array_equal(levels[1][:10, :10].compute(), base[::2, ::2][:10, :10])
    assert kwargs["scale"] == [0.25, 0.25]


def test_reader_opens_our_ome_zarr_output_as_multiscale_labels(tmp_path):
    import torch

    from napari_semseg import build_model, segment

    torch.manual_seed(0)
    model = build_model("unet", "resnet18", 1, 3, encoder_depth=3, decoder_channels=(32, 16, 8),
                        class_names=["a", "b", "c"], tile=256, halo=16)
    image = np.random.default_rng(1).integers(0, 255, (600, 700), dtype=np.uint8)
    out = tmp_path / "result.zarr"
    result = segment(image, model, output=out, tile=256, overlap=32, probabilities=True)
    layers = _reader()(str(out))(str(out))
    kinds = {kw["name"]: (kind, data, kw) for data, kw, kind in layers}
    kind, data, kw = kinds["result"]
    assert kind == "labels" and kw["multiscale"] is True and len(data) > 1
    assert np.array_equal(np.asarray(data[0]), np.asarray(result.labels))
    assert list(kw["features"]["class"])[1:] == ["a", "b", "c"]
    rgba = kw["colormap"].map(np.array([1]))[0]
    assert np.allclose(rgba[:3], [c / 255 for c in (230, 25, 75)], atol=0.01)
    kind, data, kw = kinds["result probabilities"]
    assert kind == "image" and data.shape == (3, 600, 700)


def test_reader_opens_plain_zarr_arrays_and_ome_labels(tmp_path):
    import zarr

    arr = zarr.create_array(str(tmp_path / "plain.zarr"), shape=(64, 80), chunks=(32, 32),
                            dtype="uint8")
    arr[:] = 5
    (layer,) = _reader()(str(tmp_path / "plain.zarr"))(str(tmp_path / "plain.zarr"))
    assert layer[2] == "image" and int(layer[0].max().compute()) == 5


def _layer_meta(names, colors, geo=None, scale=(1.0, 1.0)):
    ours = {"class_names": names, "class_colors": colors}
    if geo:
        ours["geo_tags"] = geo
    return {"name": "labels", "scale": list(scale), "translate": [0.0, 0.0],
            "metadata": {"napari_semseg": ours}}


def test_writer_tiff_keeps_georeferencing_and_classes(tmp_path):
    import dask.array as da
    import tifffile

    from napari_semseg._napari.writer import write_labels

    labels = np.random.default_rng(0).integers(0, 4, (700, 500), dtype=np.uint8)
    meta = _layer_meta(["water", "land", "road"], ["#0000ff", "#00ff00", "#808080"], GEO,
                       scale=(0.5, 0.5))
    path = tmp_path / "out.tif"
    written = write_labels(str(path), da.from_array(labels, chunks=256), meta)  # lazy input
    assert written == [str(path)]
    assert np.array_equal(tifffile.imread(path), labels)
    with tifffile.TiffFile(path) as tf:
        tags = tf.pages.first.tags
        assert tuple(tags[33550].value) == (0.5, 0.5, 0.0)
        assert tuple(tags[34735].value) == GEO[2][3]
        assert tf.pages.first.is_tiled
    (layer,) = _reader()(str(path))(str(path))
    data, kw, kind = layer
    assert kind == "labels"
    assert list(kw["features"]["class"])[1:] == ["water", "land", "road"]
    assert kw["scale"] == [0.5, 0.5]
    assert len(kw["metadata"]["napari_semseg"]["geo_tags"]) == 3


def test_writer_zarr_writes_an_ome_zarr_pyramid(tmp_path):
    import zarr

    from napari_semseg._napari.writer import write_labels

    labels = np.random.default_rng(0).integers(0, 3, (2100, 1500), dtype=np.uint8)
    meta = _layer_meta(["a", "b"], ["#ff0000", "#00ff00"], GEO)
    path = tmp_path / "out.zarr"
    assert write_labels(str(path), labels, meta) == [str(path)]
    root = zarr.open_group(str(path), mode="r")
    assert np.array_equal(root["0"][:], labels)
    assert np.array_equal(root["1"][:], labels[::2, ::2])
    assert root.attrs["image-label"]["properties"][1]["name"] == "b"
    assert root.attrs["napari_semseg"]["geo_tags"][0][0] == 33550
    data, kw, kind = _reader()(str(path))(str(path))[0]
    assert kind == "labels" and kw["multiscale"] is True
    assert write_labels(str(tmp_path / "x.png"), labels, meta) == []


def _seg_model():
    import torch

    from napari_semseg import build_model

    torch.manual_seed(0)
    return build_model("unet", "resnet18", 1, 3, encoder_depth=3, decoder_channels=(32, 16, 8),
                       class_names=["a", "b", "c"], tile=512, halo=16)


def _state(data, kw):
    """What napari hands a writer for a layer opened by the reader (``layer._get_state()``)."""
    return {"name": kw["name"], "scale": kw.get("scale", [1.0] * 2),
            "translate": kw.get("translate", [0.0] * 2), "metadata": kw["metadata"],
            "features": kw.get("features")}


def test_writer_zarr_output_equals_the_engine_output(tmp_path):
    """Labels the engine wrote (OME-Zarr, pyramid written while segmenting), opened and saved
    again by the plugin: the same arrays, pyramid, chunks and label metadata."""
    import zarr

    from napari_semseg import segment
    from napari_semseg._napari.writer import write_labels

    image = np.random.default_rng(2).integers(0, 255, (1100, 1300), dtype=np.uint8)
    engine = tmp_path / "engine.zarr"
    segment(image, _seg_model(), output=engine, tile=512, overlap=64, chunk=1024)
    data, kw, kind = [layer for layer in _reader()(str(engine))(str(engine))
                      if layer[2] == "labels"][0]
    ours = tmp_path / "saved.zarr"
    assert write_labels(str(ours), data, _state(data, kw)) == [str(ours)]
    a, b = zarr.open_group(str(engine), mode="r"), zarr.open_group(str(ours), mode="r")
    ms_a, ms_b = a.attrs["multiscales"][0], b.attrs["multiscales"][0]
    assert [d["path"] for d in ms_a["datasets"]] == [d["path"] for d in ms_b["datasets"]]
    assert len(ms_a["datasets"]) == 2 and ms_a["axes"] == ms_b["axes"]
    for da_, db_ in zip(ms_a["datasets"], ms_b["datasets"], strict=True):
        assert da_["coordinateTransformations"][0] == db_["coordinateTransformations"][0]
        x, y = a[da_["path"]], b[db_["path"]]
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x[:], y[:])
    assert a["0"].chunks == b["0"].chunks == (1024, 1024)
    assert a.attrs["image-label"] == b.attrs["image-label"]
    for key in ("class_names", "class_colors"):
        assert a.attrs["napari_semseg"][key] == b.attrs["napari_semseg"][key]
    assert not (tmp_path / "saved.zarr.partial").exists()


def test_writer_tiff_output_equals_the_engine_output(tmp_path):
    """The same tiled, compressed BigTIFF with the same GeoTIFF tags as the engine writes."""
    import tifffile

    from napari_semseg import segment
    from napari_semseg._napari.writer import write_labels

    src = tmp_path / "scene.tif"
    image = np.random.default_rng(3).integers(0, 255, (300, 420), dtype=np.uint8)
    tifffile.imwrite(src, image, extratags=GEO)
    engine = tmp_path / "scene_labels.tif"
    segment(src, _seg_model(), output=engine, tile=256, overlap=64)
    (layer,) = _reader()(str(engine))(str(engine))
    data, kw, kind = layer
    assert kind == "labels" and kw["metadata"]["napari_semseg"]["geo_tags"]
    ours = tmp_path / "saved.tif"
    write_labels(str(ours), data, _state(data, kw))
    with tifffile.TiffFile(engine) as ta, tifffile.TiffFile(ours) as tb:
        pa, pb = ta.pages.first, tb.pages.first
        assert ta.is_bigtiff and tb.is_bigtiff
        for attr in ("shape", "dtype", "tile", "compression", "photometric"):
            assert getattr(pa, attr) == getattr(pb, attr), attr
        for code in (t[0] for t in GEO):
            assert pa.tags[code].value == pb.tags[code].value
        np.testing.assert_array_equal(pa.asarray(), pb.asarray())


@pytest.mark.gui
def test_open_and_save_through_the_viewer(viewer, tmp_path):
    import tifffile

    src = tmp_path / "img.tif"
    image = np.random.default_rng(0).integers(0, 255, (256, 320), dtype=np.uint8)
    tifffile.imwrite(src, image, extratags=GEO)
    (layer,) = viewer.open(str(src), plugin="napari-semseg")
    assert layer.metadata["napari_semseg"]["geo_tags"]
    labels = viewer.add_labels((image > 128).astype(np.uint8) + 1, name="mask",
                               metadata={"napari_semseg": {
                                   "geo_tags": layer.metadata["napari_semseg"]["geo_tags"]}})
    out = tmp_path / "mask.tif"
    labels.save(str(out), plugin="napari-semseg")
    assert np.array_equal(tifffile.imread(out), labels.data)
    with tifffile.TiffFile(out) as tf:
        assert 34735 in tf.pages.first.tags


@pytest.mark.gui
def test_geotiff_segmented_and_saved_keeps_its_georeferencing(viewer, h, tmp_path):
    """Open a GeoTIFF, segment it in the widget, save the labels: the tags travel along."""
    import tifffile
    import torch

    from napari_semseg import build_model, save_model

    src = tmp_path / "scene.tif"
    rgb = np.random.default_rng(0).integers(0, 255, (200, 240, 3), dtype=np.uint8)
    tifffile.imwrite(src, rgb, photometric="rgb", extratags=GEO)
    torch.manual_seed(0)
    model = save_model(build_model("unet", "resnet18", 3, 2, encoder_depth=3,
                                   decoder_channels=(32, 16, 8), tile=256, halo=16),
                       tmp_path / "rgb.safetensors")
    (image,) = viewer.open(str(src), plugin="napari-semseg")
    assert image.rgb
    w = h.dock(viewer, "Segment")
    w.model.set_file(model)
    assert w.run() is not None, w.status.text()
    w.wait()
    labels = viewer.layers[-1]
    assert labels.metadata["napari_semseg"]["geo_tags"]
    out = tmp_path / "labels.tif"
    labels.save(str(out), plugin="napari-semseg")
    with tifffile.TiffFile(out) as tf:
        tags = tf.pages.first.tags
        assert tuple(tags[33922].value) == GEO[1][3] and tuple(tags[34735].value) == GEO[2][3]
    assert np.array_equal(tifffile.imread(out), np.asarray(labels.data))
