"""Open images lazily and view them as planes of ``(C, Y, X)``.

Any input — numpy, dask, zarr, a TIFF/OME-TIFF/GeoTIFF opened with tifffile ``aszarr``, an
(OME-)Zarr store, a PNG/JPEG, a ``.npy`` file — becomes an :class:`ImageSource` that reads only
the window asked for. Its canonical view is ``N`` planes (Z/T flattened) of ``C`` channels.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SemSegError

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".gtiff")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# GeoTIFF and GDAL tags copied from an input TIFF to a TIFF output.
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)
# A trailing (or leading) axis at most this long is taken for channels when the image is large.
MAX_CHANNELS = 16


@dataclass
class ImageSource:
    """A lazily read image seen as ``n_planes`` planes of ``(n_channels, height, width)``.

    Attributes
    ----------
    data
        The underlying array (numpy, dask, zarr or any object with ``shape``, ``dtype`` and
        slicing).
    channel_axis
        Axis of ``data`` holding channels, or ``None`` for one channel.
    path
        The file it came from, if any.
    """

    data: Any
    channel_axis: int | None
    path: Path | None = None
    geo_tags: list[tuple] | None = None

    def __post_init__(self) -> None:
        nd = self.data.ndim
        if self.channel_axis is not None:
            self.channel_axis %= nd
        other = [a for a in range(nd) if a != self.channel_axis]
        if len(other) < 2:
            raise SemSegError(f"image of shape {tuple(self.data.shape)} has fewer than two spatial "
                              "axes; give a 2D image, a stack or a multichannel image")
        self.y_axis, self.x_axis = other[-2], other[-1]
        self.plane_axes = tuple(other[:-2])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def n_channels(self) -> int:
        return 1 if self.channel_axis is None else self.shape[self.channel_axis]

    @property
    def plane_dims(self) -> tuple[int, ...]:
        """Sizes of the Z/T axes (empty for a 2D image)."""
        return tuple(self.shape[a] for a in self.plane_axes)

    @property
    def n_planes(self) -> int:
        return int(math.prod(self.plane_dims))

    @property
    def plane_shape(self) -> tuple[int, int]:
        return self.shape[self.y_axis], self.shape[self.x_axis]

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of a label image for this input: the input's shape without the channel axis."""
        return self.plane_dims + self.plane_shape

    def plane_index(self, plane: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(plane, self.plane_dims)) if self.plane_axes else ()

    def read(self, plane: int, rows: slice, cols: slice) -> np.ndarray:
        """Read the window ``rows, cols`` of one plane as ``(C, h, w)`` in the source dtype."""
        index: list[Any] = [slice(None)] * self.data.ndim
        for axis, i in zip(self.plane_axes, self.plane_index(plane), strict=True):
            index[axis] = i
        index[self.y_axis], index[self.x_axis] = rows, cols
        block = self.data[tuple(index)]
        if hasattr(block, "compute"):
            block = block.compute()
        block = np.asarray(block)
        # remaining axes are (channel?, y, x) in their original order
        if self.channel_axis is None:
            return block[np.newaxis]
        if self.channel_axis > self.x_axis:
            return np.moveaxis(block, -1, 0)
        if self.channel_axis > self.y_axis:
            return np.moveaxis(block, 1, 0)
        return block


def infer_channel_axis(shape: tuple[int, ...], expected: int | None = None) -> int | None:
    """Guess which axis of ``shape`` holds channels.

    Rules: a 2D image has one channel; a short last axis (<= 16) after two long ones is a
    channel axis (RGB, multispectral). A short first axis is ambiguous (channels or a Z/T stack)
    and is resolved with ``expected`` (the model's channel count) or raises a clear error.
    """
    nd = len(shape)
    if nd < 2:
        raise SemSegError(f"image of shape {shape} is not an image; give at least two dimensions")
    if nd == 2:
        return None
    if shape[-1] <= MAX_CHANNELS and min(shape[-3], shape[-2]) > MAX_CHANNELS:
        return nd - 1  # (..., Y, X, C): RGB, RGBA, multispectral
    if expected is not None and expected > 1:
        for axis in range(nd - 2):
            if shape[axis] == expected:
                return axis
    if expected == 1:
        return None  # a greyscale Z/T stack for a one-channel model
    if nd == 3 and shape[0] <= MAX_CHANNELS:
        raise SemSegError(f"cannot tell whether the first axis of shape {shape} holds channels or "
                          "slices; pass channel_axis=0 (CLI: --channel-axis 0) for channels, or "
                          "use a one-channel model for a stack")
    return None


def _geo_tags_of(page: Any) -> list[tuple]:
    """GeoTIFF/GDAL tags of a tifffile page as ``(code, dtype, count, value, True)``."""
    return [(code, int(t.dtype), t.count, t.value, True)
            for code in GEO_TAGS if (t := page.tags.get(code)) is not None]


def read_geo_tags(path: str | os.PathLike) -> list[tuple] | None:
    """GeoTIFF/GDAL tags of the first page of a TIFF (None without any, or if unreadable)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            tags = _geo_tags_of(tf.pages.first)
    except Exception:  # not a TIFF, damaged: no tags
        return None
    return tags or None


def _open_tiff(path: Path) -> tuple[Any, list[tuple] | None]:
    import tifffile
    import zarr

    try:
        with tifffile.TiffFile(path) as tf:
            if not tf.pages:
                raise SemSegError(f"cannot read {path}: not a valid TIFF (it holds no image)")
            geo = _geo_tags_of(tf.pages.first)
            _check_tiff_length(path, tf.pages.first)
            mapped = _memory_map(path, tf)
        if mapped is not None:
            return mapped, geo or None
        store = tifffile.imread(path, aszarr=True, level=0)
        arr: Any = zarr.open(store, mode="r")
    except SemSegError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise SemSegError(f"cannot read {path}: not a valid TIFF ({type(exc).__name__}: {exc})") from exc
    if hasattr(arr, "shape") is False or isinstance(arr, zarr.Group):
        return arr["0"], geo or None
    return arr, geo or None


def _memory_map(path: Path, tf: Any) -> np.ndarray | None:
    """An uncompressed, contiguous, untiled TIFF (tifffile's default layout, often one strip
    for the whole image) as a read-only memory map: a window reads only its own bytes, where
    the strip-as-chunk view would decode the whole strip for every tile. None otherwise."""
    import tifffile

    page = tf.pages.first
    if page.is_tiled or page.compression != 1 or not page.is_contiguous:
        return None
    try:
        mapped = tifffile.memmap(path, mode="r")
    except (ValueError, OSError):  # not memory-mappable after all: read it by strips
        return None
    return mapped if mapped.shape == tf.series[0].shape else None


def _check_tiff_length(path: Path, page: Any) -> None:
    """Refuse a TIFF whose image data would end past the end of the file (a truncated copy or
    a header claiming more than is there), before any work."""
    offsets = getattr(page, "dataoffsets", None) or ()
    counts = getattr(page, "databytecounts", None) or ()
    end = max((int(o) + int(c) for o, c in zip(offsets, counts, strict=False) if c), default=0)
    size = path.stat().st_size
    if end > size:
        raise SemSegError(f"cannot read {path}: the file is truncated (its image data should "
                          f"end at byte {end:,} but the file has {size:,} bytes); copy it again")


def _open_zarr(path: Path) -> Any:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise SemSegError(f"cannot read {path}: not a zarr store ({exc})") from exc
    if isinstance(node, zarr.Group):
        attrs: dict[str, Any] = dict(node.attrs)
        ms: Any = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
        if ms:
            try:
                return node[ms[0]["datasets"][0]["path"]]
            except (KeyError, IndexError, TypeError) as exc:
                raise SemSegError(f"cannot read {path}: its OME multiscales metadata names an "
                                  f"array that is not there ({exc}); open the array you mean "
                                  "(path/to/store.zarr/ARRAY)") from exc
        arrays = list(node.array_keys())
        if len(arrays) == 1:
            return node[arrays[0]]
        raise SemSegError(f"{path} is a zarr group with {len(arrays)} arrays and no OME "
                          "multiscales; open the array you mean (path/to/store.zarr/ARRAY)")
    return node


def _open_plain(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise SemSegError(f"cannot read {path}: not a valid image ({exc})") from exc


def check_regular(path: Path, what: str) -> None:
    """Refuse a FIFO, socket or device given as a file (reading one would hang or never end)."""
    import stat

    mode = path.stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise SemSegError(f"{what} {path} is not a regular file (a pipe, socket or device); "
                          "save it to a file first")


def open_array(path: str | os.PathLike) -> tuple[Any, list[tuple] | None]:
    """Open an image file lazily; return ``(array, geotiff_tags_or_None)``."""
    path = Path(path)
    if not path.exists():
        raise SemSegError(f"input {path} does not exist")
    check_regular(path, "input")
    name = path.name.lower()
    if path.is_dir() or name.endswith(".zarr") or (path / ".zgroup").exists():
        return _open_zarr(path), None
    if name.endswith(TIFF_SUFFIXES):
        return _open_tiff(path)
    if name.endswith(PLAIN_SUFFIXES):
        return _open_plain(path), None
    if name.endswith(".npy"):
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        except ValueError as exc:
            raise SemSegError(f"cannot read {path}: not a plain numpy array ({exc})") from exc
    raise SemSegError(f"cannot read {path}: unsupported format; use TIFF, OME-Zarr/zarr, PNG, "
                      "JPEG or .npy")


def open_image(image: Any, channel_axis: int | None = None,
               expected_channels: int | None = None) -> ImageSource:
    """Open ``image`` (array, lazy array, path or :class:`ImageSource`) without reading pixels.

    Parameters
    ----------
    image
        numpy/dask/zarr array, path to a TIFF/zarr/PNG/JPEG/.npy file, or an ImageSource.
    channel_axis
        Axis holding channels; inferred when ``None`` (see :func:`infer_channel_axis`).
    expected_channels
        Channels the model expects; used to resolve ambiguous layouts and to check the image.
    """
    if isinstance(image, ImageSource):
        source = image
    else:
        path, geo = None, None
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            image, geo = open_array(path)
        if not hasattr(image, "shape") or not hasattr(image, "dtype"):
            image = np.asarray(image)
        shape = tuple(int(s) for s in image.shape)
        label = str(path) if path else "image"
        if any(s == 0 for s in shape):
            raise SemSegError(f"{label} is empty (shape {shape})")
        dtype = np.dtype(image.dtype)
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or np.issubdtype(dtype, np.complexfloating):
            raise SemSegError(f"{label} has pixel type {dtype}; give integer or float pixels")
        if channel_axis is None:
            channel_axis = infer_channel_axis(shape, expected_channels)
        elif not -len(shape) <= channel_axis < len(shape):
            raise SemSegError(f"channel_axis {channel_axis} is out of range for shape {shape}")
        source = ImageSource(image, channel_axis, path, geo)
    h, w = source.plane_shape
    if h < 2 or w < 2:
        raise SemSegError(f"image planes are {h}x{w} pixels; need at least 2x2 to segment")
    if expected_channels is not None and source.n_channels != expected_channels:
        raise SemSegError(f"image has {source.n_channels} channel(s) (shape {source.shape}) but the "
                          f"model expects {expected_channels}; use a model trained on such images "
                          "or pass channel_axis")
    return source


def check_finite(source: ImageSource, max_pixels: int = 64 * 2**20) -> None:
    """Raise if a float image holds NaN/inf. Images up to ``max_pixels`` are scanned whole
    (plane by plane, in bands); larger ones are checked again tile by tile during prediction."""
    if not np.issubdtype(source.dtype, np.floating):
        return
    h, w = source.plane_shape
    if source.n_planes * h * w * source.n_channels > max_pixels:
        return
    band = max(1, 2**22 // max(w, 1))
    for p in range(source.n_planes):
        for y in range(0, h, band):
            if not np.isfinite(source.read(p, slice(y, min(h, y + band)), slice(0, w))).all():
                raise SemSegError("the image contains NaN or infinite pixels; replace them (e.g. "
                                  "with numpy.nan_to_num) before segmenting")
