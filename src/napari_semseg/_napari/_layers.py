"""Layer helpers shared by the widgets: image data, spatial metadata, class colours, ownership.

Layers the plugin creates carry ``layer.metadata["napari_semseg"]`` with at least ``role``
(``"labels"``, ``"probabilities"``, ``"uncertainty"``, ``"preview"``, ``"annotations"``) and
``source`` (the ``unique_id`` of the image layer they belong to). Re-running a job replaces only
layers with that marker; user layers are never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.constants import METADATA_KEY as KEY
from ..core.constants import default_colors, hex_to_rgb
from ..core.io import TIFF_SUFFIXES, read_geo_tags


def hex_to_rgba(color: str, alpha: float = 1.0) -> np.ndarray:
    """``"#rrggbb"`` as a float RGBA array (0-1), as napari colormaps take it."""
    return np.array([v / 255 for v in hex_to_rgb(color)] + [alpha], np.float32)


def rgba_to_hex(rgba: Sequence[float]) -> str:
    r, g, b = (int(round(float(v) * 255)) for v in list(rgba)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def class_colormap(colors: Sequence[str]) -> Any:
    """A napari DirectLabelColormap: 0 transparent, class k in ``colors[k - 1]``."""
    from napari.utils.colormaps import DirectLabelColormap

    mapping: dict[int | None, Any] = {None: np.array([0.5, 0.5, 0.5, 1.0], np.float32),
                                      0: np.zeros(4, np.float32)}
    for k, c in enumerate(colors, start=1):
        mapping[k] = hex_to_rgba(c)
    return DirectLabelColormap(color_dict=mapping)


def class_features(names: Sequence[str], zero: str = "not annotated") -> dict[str, list]:
    """Labels features table: label value -> class name (shown in the status bar).

    ``zero`` names label 0: "not annotated" in annotation layers, "not computed yet" in results.
    """
    return {"index": list(range(len(names) + 1)), "class": [zero, *names]}


def layer_classes(layer: Any, n: int | None = None) -> tuple[list[str], list[str]]:
    """Class names and ``#rrggbb`` colours of a Labels layer's classes 1..n.

    Names come from the plugin marker or the layer's ``class`` feature, colours from its colormap;
    ``n`` defaults to the number of names known (at least the largest painted value is needed by
    the caller, who passes it).
    """
    meta = layer.metadata.get(KEY, {}) if isinstance(layer.metadata, dict) else {}
    names = list(meta.get("class_names") or [])
    if not names:
        try:
            feats = layer.features
            if "class" in feats and "index" in feats:
                lookup = dict(zip(feats["index"], feats["class"], strict=True))
                top = max(int(i) for i in lookup) if lookup else 0
                names = [str(lookup.get(k, f"class {k}")) for k in range(1, top + 1)]
        except Exception:  # features are optional
            names = []
    if n is None:
        n = len(names)
    names = (names + [f"class {k}" for k in range(len(names) + 1, n + 1)])[:n]
    colors = []
    for k in range(1, n + 1):
        try:
            colors.append(rgba_to_hex(layer.colormap.map(np.array([k]))[0]))
        except Exception:
            colors.append(default_colors(k)[-1])
    return names, colors


def base_data(layer: Any) -> Any:
    """Full-resolution data of a layer (level 0 of a multiscale layer), not read."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def channel_axis_of(layer: Any) -> int | None:
    """Channel axis of an image layer's data: the last axis for RGB layers, else inferred."""
    return base_data(layer).ndim - 1 if getattr(layer, "rgb", False) else None


def layer_source(layer: Any, expected_channels: int | None = None) -> Any:
    """The :class:`~napari_semseg.core.io.ImageSource` of an image layer, as napari shows it.

    RGB layers have their channels last. Other layers are stacks for napari (every leading axis
    is a slider), so when the layout is ambiguous (a short first axis and no model to say how
    many channels it wants) the leading axes are taken as Z/T, not as channels.
    """
    from ..core.errors import SemSegError
    from ..core.io import ImageSource, infer_channel_axis, open_image

    data = base_data(layer)
    try:
        if getattr(layer, "rgb", False):
            return open_image(data, data.ndim - 1, expected_channels=expected_channels)
        shape = tuple(int(s) for s in data.shape)
        try:
            axis = infer_channel_axis(shape, expected_channels)
        except SemSegError:
            if expected_channels is not None:
                raise
            axis = None
        return open_image(ImageSource(data, axis), expected_channels=expected_channels)
    except SemSegError as exc:
        if "channel_axis" not in str(exc):
            raise
        raise SemSegError(channel_mismatch_text(layer, str(exc))) from None


def channel_mismatch_text(layer: Any, engine_text: str) -> str:
    """A channel-mismatch message in the widgets' words: the fields to change, not the API's
    "pass channel_axis"."""
    what = engine_text.split(";")[0].replace("image has", f"image '{layer.name}' has", 1)
    return (f"{what}; choose a model made for such images under model (Train: 'new model' "
            "under start from), or another layer under image")


def spatial_kwargs(layer: Any, channel_axis: int | None = None) -> dict[str, Any]:
    """scale/translate/axis labels/units of ``layer`` for a layer without its channel axis.

    ``channel_axis`` is the axis of the layer's data that holds channels when the layer is not an
    RGB layer (napari then shows it as a slider); it is dropped.
    """
    keep = list(range(layer.ndim))
    if channel_axis is not None and not getattr(layer, "rgb", False):
        keep.remove(channel_axis % layer.ndim)
    out: dict[str, Any] = {
        "scale": [float(layer.scale[a]) for a in keep],
        "translate": [float(layer.translate[a]) for a in keep],
    }
    labels = getattr(layer, "axis_labels", None)
    if labels is not None:
        out["axis_labels"] = [labels[a] for a in keep]
    units = getattr(layer, "units", None)
    if units is not None:
        out["units"] = [str(units[a]) for a in keep]
    return out


def geo_tags_of(layer: Any) -> list | None:
    """GeoTIFF tags of a layer: from our metadata, else from its source file if it is a TIFF."""
    meta = layer.metadata.get(KEY, {}) if isinstance(layer.metadata, dict) else {}
    if meta.get("geo_tags"):
        return meta["geo_tags"]
    path = getattr(getattr(layer, "source", None), "path", None)
    if path and str(path).lower().endswith(TIFF_SUFFIXES) and Path(path).is_file():
        return read_geo_tags(path)
    return None


def marker(layer: Any) -> dict[str, Any]:
    """The plugin marker of a layer (empty for user layers)."""
    meta = layer.metadata if isinstance(getattr(layer, "metadata", None), dict) else {}
    value = meta.get(KEY)
    return value if isinstance(value, dict) and value.get("role") else {}


def owned_layers(viewer: Any, role: str, source: Any) -> list[Any]:
    """Layers created by the plugin with ``role`` for the image layer id ``source``."""
    return [ly for ly in viewer.layers
            if marker(ly).get("role") == role and marker(ly).get("source") == str(source)]


def put_layer(viewer: Any, layer: Any, role: str, source: Any) -> Any:
    """Add ``layer``, replacing the plugin's previous layer of the same role and source.

    The new layer takes the old one's place in the layer list; user layers are never removed.
    """
    old = owned_layers(viewer, role, source)
    index = viewer.layers.index(old[0]) if old else None
    for ly in old:
        viewer.layers.remove(ly)
    layer.metadata.setdefault(KEY, {}).update(role=role, source=str(source))
    if index is None:
        viewer.add_layer(layer)
    else:
        viewer.layers.insert(min(index, len(viewer.layers)), layer)
    return layer
