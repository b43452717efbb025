"""napari sample data: a real EM crop and an aerial tile, each with its bundled model.

The image layers name their matching model in ``metadata["napari_semseg"]["model"]``; the
Segment widget selects it when the image is chosen, so File > Open Sample > napari-semseg and a
click on *Segment* is all a new user needs. The training sample adds example brush strokes to a
second EM slice for the Train widget.
"""

from __future__ import annotations

from typing import Any

from ..core.constants import METADATA_KEY as KEY

LayerData = tuple[Any, dict[str, Any], str]


def _path(name: str) -> Any:
    from napari_semseg.sample_data import sample_path

    return sample_path(name)


def _meta(model: str, truth: str) -> dict[str, Any]:
    meta = {"ground_truth": str(_path(truth)), "sample": True}
    try:
        meta["model"] = str(_path(model))
    except FileNotFoundError:  # a source checkout before the models were trained
        pass
    return {KEY: meta}


def em_sample() -> list[LayerData]:
    """ISBI 2012 EM slice 29 (512x512); model: membrane / cell interior."""
    import tifffile

    image = tifffile.imread(_path("em.tif"))
    return [(image, {"name": "EM (ISBI 2012)", "metadata": _meta("em_model.safetensors",
                                                                 "em_labels.tif")}, "image")]


def aerial_sample() -> list[LayerData]:
    """Dubai aerial RGB tile (1024x1024); model: building, land, road, vegetation, water."""
    import tifffile

    image = tifffile.imread(_path("aerial.tif"))
    return [(image, {"name": "aerial (Dubai)", "rgb": True,
                     "metadata": _meta("aerial_model.safetensors", "aerial_labels.tif")},
             "image")]


def model_classes(path: Any) -> tuple[list[str], list[str]]:
    """Class names and colours from a model file's header (no torch import: JSON only)."""
    import json
    import struct

    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    meta = json.loads(header["__metadata__"][KEY])
    return list(meta["class_names"]), list(meta["class_colors"])


def example_strokes() -> Any:
    """The bundled example strokes on ``em_train.tif`` (1.5 % of the pixels, seeded scribbles
    drawn inside the classes of the ground truth by ``napari_semseg.core.scribbles``)."""
    import tifffile

    try:
        return tifffile.imread(_path("em_train_scribbles.tif"))
    except FileNotFoundError:  # a source checkout before the scribbles were made
        from napari_semseg.core.scribbles import make_scribbles

        return make_scribbles(tifffile.imread(_path("em_train_labels.tif")), fraction=0.015,
                              radius=1, seed=0)


def em_training_sample() -> list[LayerData]:
    """ISBI 2012 EM slice 0 with example strokes (1 membrane, 2 interior), for the Train widget."""
    import tifffile

    from ._layers import class_colormap, class_features, default_colors

    image = tifffile.imread(_path("em_train.tif"))
    strokes = example_strokes()
    try:  # the colours of the bundled EM model, so that results and strokes match
        names, colors = model_classes(_path("em_model.safetensors"))
    except (FileNotFoundError, KeyError, ValueError):
        names, colors = ["membrane", "interior"], default_colors(2)
    return [
        (image, {"name": "EM training slice", "metadata": {KEY: {"sample": True}}}, "image"),
        (strokes, {"name": "strokes", "colormap": class_colormap(colors),
                   "features": class_features(names),
                   "metadata": {KEY: {"class_names": names, "class_colors": colors}}}, "labels"),
    ]
