"""napari writer for Labels layers: tiled (Big)TIFF or OME-Zarr, written chunk by chunk.

Class names and colours, scale and translate travel with the file (TIFF: the JSON image
description; OME-Zarr: ``image-label`` and ``multiscales``), and GeoTIFF tags that the source
image had (kept in ``layer.metadata["napari_semseg"]["geo_tags"]`` by the reader and the Segment
widget) are written into the TIFF, or stored in the zarr attributes. The data may be lazy (dask,
zarr) and larger than memory: only one block is read at a time.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

KEY = "napari_semseg"
BLOCK = 1024
TIFF_TILE = 256


def _base(data: Any) -> Any:
    if isinstance(data, (list, tuple)):
        return data[0]
    if getattr(data, "ndim", None) is None and hasattr(data, "__getitem__"):
        return data[0]  # napari MultiScaleData
    return data


def _levels(data: Any) -> list[Any]:
    if isinstance(data, (list, tuple)):
        return list(data)
    if type(data).__name__ == "MultiScaleData":
        return list(data)
    return [data]


def _ours(meta: dict[str, Any]) -> dict[str, Any]:
    value = (meta.get("metadata") or {}).get(KEY)
    return dict(value) if isinstance(value, dict) else {}


def _class_info(meta: dict[str, Any]) -> tuple[list[str], list[str]]:
    ours = _ours(meta)
    names = list(ours.get("class_names") or [])
    colors = list(ours.get("class_colors") or [])
    if not names:
        feats = meta.get("features")
        try:
            if feats is not None and "class" in feats and "index" in feats:
                lookup = dict(zip(feats["index"], feats["class"]))
                names = [str(lookup[k]) for k in sorted(lookup) if int(k) > 0]
        except Exception:
            names = []
    return names, colors


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def geo_tags_for_tiff(tags: list | None) -> list[tuple]:
    """GeoTIFF tags as tifffile ``extratags`` (restores tuples after a JSON round trip)."""
    out = []
    for tag in tags or []:
        code, dtype, count, value = tag[:4]
        if isinstance(value, list):
            value = tuple(value)
        out.append((int(code), int(dtype), int(count), value, True))
    return out


def _blocks(arr: Any, block: int) -> Iterator[tuple[tuple, np.ndarray]]:
    """``(index, numpy block)`` over all leading axes and (Y, X) blocks."""
    h, w = arr.shape[-2:]
    for lead in np.ndindex(*arr.shape[:-2]):
        for y in range(0, h, block):
            for x in range(0, w, block):
                idx = lead + (slice(y, min(h, y + block)), slice(x, min(x + block, w)))
                yield idx, np.asarray(arr[idx])


def _tiff_tiles(arr: Any, tile: int) -> Iterator[np.ndarray]:
    for _, block in _blocks(arr, tile):
        if block.shape != (tile, tile):
            block = np.pad(block, ((0, tile - block.shape[0]), (0, tile - block.shape[1])))
        yield block


def write_tiff(path: Path, data: Any, meta: dict[str, Any]) -> Path:
    """Tiled, compressed BigTIFF, tile by tile; GeoTIFF tags and class info kept."""
    import tifffile

    arr = _base(data)
    names, colors = _class_info(meta)
    ours = _ours(meta)
    description = {KEY: {"kind": "labels", "class_names": names, "class_colors": colors,
                         "scale": _jsonable(list(meta.get("scale", []))) or None,
                         "translate": _jsonable(list(meta.get("translate", []))) or None}}
    axes = "".join("TZ"[-(arr.ndim - 2):] if arr.ndim > 2 else "") + "YX"
    if arr.ndim > 4:
        axes = "Q" * (arr.ndim - 2) + "YX"
    dtype = np.dtype(arr.dtype)
    tmp = path.with_name(path.name + ".partial")
    tifffile.imwrite(tmp, _tiff_tiles(arr, TIFF_TILE), shape=tuple(arr.shape), dtype=dtype,
                     tile=(TIFF_TILE, TIFF_TILE), bigtiff=True, compression="zlib",
                     photometric="minisblack", extratags=geo_tags_for_tiff(ours.get("geo_tags")),
                     metadata={"axes": axes, **description})
    os.replace(tmp, path)
    return path


def write_zarr(path: Path, data: Any, meta: dict[str, Any]) -> Path:
    """OME-Zarr (NGFF 0.4, zarr format 2) labels image with a pyramid, block by block."""
    import zarr

    levels = _levels(data)
    base = levels[0]
    names, colors = _class_info(meta)
    ours = _ours(meta)
    nd = base.ndim
    scale = [float(s) for s in meta.get("scale", [1.0] * nd)]
    translate = [float(t) for t in meta.get("translate", [0.0] * nd)]
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
    chunks = (1,) * (nd - 2) + (BLOCK, BLOCK)
    written = []
    src = base
    for lv in range(32):
        arr = levels[lv] if lv < len(levels) else None
        if arr is None:  # build the next level by 2x nearest downsampling of the previous
            if max(src.shape[-2:]) <= BLOCK:
                break
            shape = tuple(src.shape[:-2]) + tuple((s + 1) // 2 for s in src.shape[-2:])
            dst = root.create_array(str(lv), shape=shape, dtype=src.dtype, chunks=chunks,
                                    fill_value=0)
            for idx, block in _blocks(src, 2 * BLOCK):
                ys, xs = idx[-2:]
                small = block[..., ::2, ::2]
                dst[idx[:-2] + (slice(ys.start // 2, ys.start // 2 + small.shape[-2]),
                                slice(xs.start // 2, xs.start // 2 + small.shape[-1]))] = small
        else:
            dst = root.create_array(str(lv), shape=tuple(arr.shape), dtype=np.dtype(arr.dtype),
                                    chunks=chunks, fill_value=0)
            for idx, block in _blocks(arr, BLOCK):
                dst[idx] = block
        written.append(dst)
        src = dst
    factor = [[1.0] * (nd - 2) + [base.shape[-2] / a.shape[-2], base.shape[-1] / a.shape[-1]]
              for a in written]
    plane_names = ["t", "z"][-(nd - 2):] if nd > 2 else []
    axes = [{"name": n, "type": "time" if n == "t" else "space"} for n in plane_names[:nd - 2]]
    if nd - 2 > 2:
        axes = [{"name": f"dim_{i}"} for i in range(nd - 2)]
    axes += [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    datasets = [{"path": str(i), "coordinateTransformations": [
        {"type": "scale", "scale": [s * f for s, f in zip(scale, factor[i])]},
        {"type": "translation", "translation": translate}]} for i in range(len(written))]
    root.attrs.update({
        "multiscales": [{"version": "0.4", "name": meta.get("name", "labels"), "axes": axes,
                         "datasets": datasets}],
        "image-label": {
            "version": "0.4",
            "colors": [{"label-value": k + 1,
                        "rgba": [int(c.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4)] + [255]}
                       for k, c in enumerate(colors)],
            "properties": [{"label-value": k + 1, "name": n} for k, n in enumerate(names)],
        },
        KEY: _jsonable({"class_names": names, "class_colors": colors,
                        "geo_tags": ours.get("geo_tags"), "complete": True}),
    })
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.replace(tmp, path)
    return path


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari single-layer writer for Labels: ``.tif``/``.tiff`` or ``.zarr``/``.ome.zarr``."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith((".zarr", ".ome.zarr")):
        return [str(write_zarr(p, data, meta))]
    if name.endswith((".tif", ".tiff")):
        return [str(write_tiff(p, data, meta))]
    return []
