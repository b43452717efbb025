"""napari reader: TIFF / OME-TIFF / GeoTIFF and zarr / OME-Zarr, opened lazily.

Pixels are never read here: every layer is a dask array over a zarr view of the file (tifffile
``aszarr`` for TIFF), and files with a pyramid (pyramidal OME-TIFF, OME-Zarr multiscales such as
the segmentation outputs of napari-semseg) open as multiscale layers. GeoTIFF tags are kept in
``layer.metadata["napari_semseg"]["geo_tags"]`` so that results written back keep the
georeferencing. Files the reader does not handle get ``None`` (napari then asks another reader).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.constants import METADATA_KEY as KEY
from ..core.io import TIFF_SUFFIXES

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
ZARR_MARKERS = (".zgroup", ".zarray", "zarr.json")

LayerData = tuple[Any, dict[str, Any], str]


def _kind(path: Any) -> str | None:
    """``"tiff"``, ``"zarr"`` or None for a path this reader does not handle."""
    if not isinstance(path, (str, Path)):
        return None
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        return "zarr" if any((p / m).exists() for m in ZARR_MARKERS) else None
    if name.endswith(TIFF_SUFFIXES) and p.is_file():
        try:
            with open(p, "rb") as fh:
                return "tiff" if fh.read(4) in TIFF_MAGIC else None
        except OSError:
            return None
    return None


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read` if every path is a TIFF or a zarr store, else None."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or any(_kind(p) is None for p in paths):
        return None
    return read


def read(path: str | list[str]) -> list[LayerData]:
    """Layer data tuples for one path or several."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    out: list[LayerData] = []
    for p in paths:
        out += read_tiff(p) if _kind(p) == "tiff" else read_zarr(p)
    return out


# TIFF ---------------------------------------------------------------------------------------
def _ome_scale(ome_xml: str | None, axes: str) -> list[float] | None:
    if not ome_xml:
        return None
    sizes = {}
    for ax in "XYZ":
        m = re.search(rf'PhysicalSize{ax}="([0-9.eE+-]+)"', ome_xml)
        if m:
            sizes[ax] = float(m.group(1))
    if not sizes:
        return None
    return [sizes.get(a, 1.0) for a in axes]


def _our_metadata(tf: Any) -> dict[str, Any]:
    """The ``napari_semseg`` entry of a TIFF written by our writer (shaped JSON description)."""
    try:
        for meta in tf.shaped_metadata or ():
            if isinstance(meta, dict) and isinstance(meta.get(KEY), dict):
                return meta[KEY]
    except Exception:
        pass
    try:
        desc = json.loads(tf.pages.first.description)
        if isinstance(desc, dict) and isinstance(desc.get(KEY), dict):
            return desc[KEY]
    except Exception:
        pass
    return {}


def read_tiff(path: str | Path) -> list[LayerData]:
    """One layer for the first series of a TIFF (multiscale when it has a pyramid)."""
    import dask.array as da
    import tifffile
    import zarr

    from ..core.io import read_geo_tags
    from ._layers import class_colormap, class_features

    path = Path(path)
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        n_levels = len(series.levels)
        axes = series.axes
        ome_xml = tf.ome_metadata if tf.is_ome else None
        ours = _our_metadata(tf)
        dtype = series.dtype
    levels = []
    for lv in range(n_levels):
        arr = zarr.open(tifffile.imread(path, aszarr=True, series=0, level=lv), mode="r")
        levels.append(da.from_zarr(arr))
    rgb = axes.endswith("S") and levels[0].shape[-1] in (3, 4)
    spatial_axes = axes[:-1] if rgb else axes
    kwargs: dict[str, Any] = {"name": path.name.split(".")[0]}
    if n_levels > 1:
        kwargs["multiscale"] = True
    else:
        levels = levels[0]
    meta: dict[str, Any] = {"path": str(path), "axes": axes}
    geo = read_geo_tags(path)
    if geo:
        meta["geo_tags"] = geo
    scale = ours.get("scale") or _ome_scale(ome_xml, spatial_axes)
    if scale and len(scale) == len(spatial_axes):
        kwargs["scale"] = scale
    if ours.get("translate") and len(ours["translate"]) == len(spatial_axes):
        kwargs["translate"] = ours["translate"]
    if spatial_axes.isalpha() and len(set(spatial_axes)) == len(spatial_axes):
        kwargs["axis_labels"] = [a.lower() for a in spatial_axes]
    is_labels = ours.get("kind") == "labels" or (
        not rgb and dtype.kind in "iu" and re.search(r"(label|mask|annotation)", path.name.lower()))
    if is_labels:
        names = ours.get("class_names")
        colors = ours.get("class_colors")
        if names:
            kwargs["features"] = class_features(names)
            meta["class_names"] = names
        if colors:
            kwargs["colormap"] = class_colormap(colors)
            meta["class_colors"] = colors
        kwargs["metadata"] = {KEY: meta}
        return [(levels, kwargs, "labels")]
    kwargs["rgb"] = rgb
    kwargs["metadata"] = {KEY: meta}
    return [(levels, kwargs, "image")]


# zarr -------------------------------------------------------------------------------------
def _multiscales(node: Any) -> list[dict] | None:
    attrs = dict(node.attrs)
    return attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")


def _image_from_group(group: Any, name: str, path: Path) -> LayerData | None:
    """One layer from an OME-Zarr multiscale image group (labels when it is an image-label)."""
    import dask.array as da

    from ._layers import class_colormap, class_features

    ms = _multiscales(group)
    if not ms:
        return None
    info = ms[0]
    datasets = info["datasets"]
    levels = [da.from_zarr(group[d["path"]]) for d in datasets]
    axes = info.get("axes") or []
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
    kwargs: dict[str, Any] = {"name": name}
    for t in datasets[0].get("coordinateTransformations", []) or []:
        if t.get("type") == "scale" and len(t["scale"]) == levels[0].ndim:
            kwargs["scale"] = [float(s) for s in t["scale"]]
        if t.get("type") == "translation" and len(t["translation"]) == levels[0].ndim:
            kwargs["translate"] = [float(s) for s in t["translation"]]
    if len(names) == levels[0].ndim:
        kwargs["axis_labels"] = names
    if len(levels) > 1:
        kwargs["multiscale"] = True
    data: Any = levels if len(levels) > 1 else levels[0]
    attrs = dict(group.attrs)
    ours = dict(attrs.get(KEY) or {})
    meta = {"path": str(path)}
    for key in ("class_names", "class_colors", "geo_tags", "model"):
        if ours.get(key):
            meta[key] = ours[key]
    label_info = attrs.get("image-label")
    if label_info is not None:
        colors = {int(c["label-value"]): c["rgba"] for c in label_info.get("colors", [])}
        props = {int(p["label-value"]): p.get("name", p.get("class"))
                 for p in label_info.get("properties", [])}
        if colors:
            top = max(colors)
            hexes = ["#%02x%02x%02x" % tuple(int(v) for v in colors.get(k, [128, 128, 128])[:3])
                     for k in range(1, top + 1)]
            kwargs["colormap"] = class_colormap(hexes)
            meta.setdefault("class_colors", hexes)
        if props:
            top = max(props)
            names_ = [str(props.get(k, f"class {k}")) for k in range(1, top + 1)]
            kwargs["features"] = class_features(names_)
            meta.setdefault("class_names", names_)
        kwargs["metadata"] = {KEY: meta}
        return data, kwargs, "labels"
    if levels[0].dtype == "uint8":
        kwargs["contrast_limits"] = (0, 255)
    kwargs["metadata"] = {KEY: meta}
    return data, kwargs, "image"


def read_zarr(path: str | Path) -> list[LayerData]:
    """Layers of a zarr array, an OME-Zarr image (with its labels/ and our result groups)."""
    import dask.array as da
    import zarr

    path = Path(path)
    node = zarr.open(str(path), mode="r")
    stem = path.name.split(".")[0]
    if isinstance(node, zarr.Array):
        return [(da.from_zarr(node), {"name": stem, "metadata": {KEY: {"path": str(path)}}},
                 "image")]
    out: list[LayerData] = []
    extras = []
    for sub in ("probabilities", "uncertainty"):  # napari-semseg result stores
        if sub in node and isinstance(node[sub], zarr.Group):
            layer = _image_from_group(node[sub], f"{stem} {sub}", path)
            if layer is not None:
                extras.append(layer)
    main = _image_from_group(node, stem, path)
    if main is not None:
        out += extras + [main]
    labels_attr = None
    if "labels" in node and isinstance(node["labels"], zarr.Group):
        labels_attr = dict(node["labels"].attrs).get("labels")
    for name in labels_attr or []:
        group = node["labels"][name]
        layer = _image_from_group(group, f"{stem} {name}", path)
        if layer is not None:
            out.append((layer[0], layer[1], "labels"))
    if not out and main is None:
        for name in node.array_keys():
            out.append((da.from_zarr(node[name]), {"name": f"{stem} {name}"}, "image"))
        out += extras
    return out
