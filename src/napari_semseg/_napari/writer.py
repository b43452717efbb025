"""napari writer for Labels layers: tiled (Big)TIFF or OME-Zarr, written block by block.

A thin adapter over :mod:`napari_semseg.core.label_files`: class names and colours, scale and
translate travel with the file (TIFF: the JSON image description; OME-Zarr: ``image-label`` and
``multiscales``), and GeoTIFF tags that the source image had (kept in
``layer.metadata["napari_semseg"]["geo_tags"]`` by the reader and the Segment widget) are written
into the TIFF, or stored in the zarr attributes. The data may be lazy (dask, zarr) and larger
than memory: only one block is read at a time. A multiscale layer is written from its full
resolution (the OME-Zarr pyramid is rebuilt from it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.constants import METADATA_KEY
from ..core.label_files import LabelsInfo, write_labels_tiff, write_labels_zarr


def _base(data: Any) -> Any:
    """Full-resolution data of a (possibly multiscale) layer's data."""
    if isinstance(data, (list, tuple)):
        return data[0]
    if getattr(data, "ndim", None) is None and hasattr(data, "__getitem__"):
        return data[0]  # napari MultiScaleData
    return data


def _ours(meta: dict[str, Any]) -> dict[str, Any]:
    value = (meta.get("metadata") or {}).get(METADATA_KEY)
    return dict(value) if isinstance(value, dict) else {}


def _class_names(meta: dict[str, Any]) -> list[str]:
    """Names of classes 1..K: from the plugin's metadata, else the layer's ``class`` feature."""
    names = list(_ours(meta).get("class_names") or [])
    feats = meta.get("features")
    if names or feats is None:
        return names
    try:
        if "class" in feats and "index" in feats:
            lookup = dict(zip(feats["index"], feats["class"], strict=True))
            return [str(lookup[k]) for k in sorted(lookup) if int(k) > 0]
    except Exception:  # features are optional
        pass
    return []


def labels_info(meta: dict[str, Any]) -> LabelsInfo:
    """What napari's layer attributes ``meta`` say about the labels besides their pixels."""
    ours = _ours(meta)
    return LabelsInfo(class_names=_class_names(meta),
                      class_colors=list(ours.get("class_colors") or []),
                      geo_tags=ours.get("geo_tags"),
                      scale=list(meta["scale"]) if meta.get("scale") is not None else None,
                      translate=(list(meta["translate"]) if meta.get("translate") is not None
                                 else None),
                      name=meta.get("name", "labels"))


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari single-layer writer for Labels: ``.tif``/``.tiff`` or ``.zarr``/``.ome.zarr``."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith((".zarr", ".ome.zarr")):
        return [str(write_labels_zarr(p, _base(data), labels_info(meta)))]
    if name.endswith((".tif", ".tiff")):
        return [str(write_labels_tiff(p, _base(data), labels_info(meta)))]
    return []
