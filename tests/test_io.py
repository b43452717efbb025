"""open_image: formats, lazy reading, channel inference and its clear errors."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_semseg.core.errors import SemSegError
from napari_semseg.core.io import infer_channel_axis, open_image


def test_greyscale_2d():
    src = open_image(np.zeros((40, 50), np.uint16))
    assert (src.n_planes, src.n_channels, src.plane_shape, src.output_shape) == (1, 1, (40, 50), (40, 50))


def test_rgb_channels_last_read_window():
    img = np.arange(40 * 50 * 3, dtype=np.int32).reshape(40, 50, 3)
    src = open_image(img)
    assert src.n_channels == 3 and src.plane_shape == (40, 50)
    np.testing.assert_array_equal(src.read(0, slice(5, 9), slice(10, 20)),
                                  np.moveaxis(img[5:9, 10:20], -1, 0))


def test_channels_first_given_explicitly_and_by_model():
    img = np.random.default_rng(0).random((4, 64, 64)).astype(np.float32)
    assert open_image(img, channel_axis=0).n_channels == 4
    assert open_image(img, expected_channels=4).n_channels == 4
    np.testing.assert_array_equal(open_image(img, channel_axis=0).read(0, slice(0, 2), slice(3, 5)),
                                  img[:, 0:2, 3:5])


def test_stack_is_segmented_plane_by_plane():
    img = np.random.default_rng(0).integers(0, 255, (5, 64, 64), dtype=np.uint8)
    src = open_image(img, expected_channels=1)
    assert src.n_planes == 5 and src.n_channels == 1 and src.output_shape == (5, 64, 64)
    np.testing.assert_array_equal(src.read(3, slice(0, 4), slice(0, 4))[0], img[3, :4, :4])


def test_zct_stack_with_channels_in_the_middle():
    img = np.zeros((3, 2, 40, 40), np.uint8)  # Z, C, Y, X
    img[1, 1] = 7
    src = open_image(img, expected_channels=2)
    assert src.channel_axis == 1 and src.n_planes == 3 and src.output_shape == (3, 40, 40)
    assert src.read(1, slice(0, 2), slice(0, 2))[1].max() == 7


def test_ambiguous_first_axis_is_a_clear_error():
    with pytest.raises(SemSegError, match="channel_axis=0"):
        infer_channel_axis((3, 512, 512))


def test_lazy_sources_dask_zarr_tiff(tmp_path):
    img = np.random.default_rng(1).integers(0, 60000, (300, 200), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", img, tile=(64, 64))
    z = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=img.shape, chunks=(64, 64),
                        dtype=img.dtype)
    z[:] = img
    for source in (da.from_array(img, chunks=64), z, tmp_path / "a.tif", tmp_path / "a.zarr"):
        src = open_image(source)
        assert src.dtype == np.uint16 and src.plane_shape == (300, 200)
        np.testing.assert_array_equal(src.read(0, slice(10, 100), slice(50, 70))[0], img[10:100, 50:70])


def test_tiff_is_opened_without_reading_pixels(tmp_path):
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((4096, 4096), np.uint8), tile=(256, 256))
    src = open_image(tmp_path / "big.tif")
    assert not isinstance(src.data, np.ndarray)  # a lazy zarr view over the TIFF tiles


def test_png_and_npy(tmp_path):
    img = np.random.default_rng(2).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    np.save(tmp_path / "a.npy", img)
    for path in (tmp_path / "a.png", tmp_path / "a.npy"):
        np.testing.assert_array_equal(np.moveaxis(open_image(path).read(0, slice(0, 30), slice(0, 40)), 0, -1), img)


def test_geotiff_tags_are_read(tmp_path):
    tags = [(33550, "d", 3, (0.5, 0.5, 0.0), True), (33922, "d", 6, (0, 0, 0, 100.0, 200.0, 0), True)]
    tifffile.imwrite(tmp_path / "geo.tif", np.zeros((64, 64), np.uint8), extratags=tags)
    src = open_image(tmp_path / "geo.tif")
    assert {t[0] for t in src.geo_tags} == {33550, 33922}


def test_an_uncompressed_strip_tiff_is_memory_mapped_not_decoded_whole(tmp_path):
    """tifffile's default layout (uncompressed, contiguous strips, often one strip for the
    whole image) is read through a memory map: a window reads only its own bytes."""
    import tifffile

    from napari_semseg.core.io import open_image

    image = np.random.default_rng(0).integers(0, 255, (1500, 1300), np.uint8)
    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, image)  # default: uncompressed strips
    assert not tifffile.TiffFile(path).pages.first.is_tiled
    source = open_image(path)
    assert isinstance(source.data, np.memmap)
    np.testing.assert_array_equal(source.read(0, slice(700, 764), slice(10, 90))[0],
                                  image[700:764, 10:90])
    tiled = tmp_path / "tiled.tif"
    tifffile.imwrite(tiled, image, tile=(256, 256), compression="zlib")
    assert not isinstance(open_image(tiled).data, np.memmap)  # tiles are read tile by tile
