"""napari-semseg: semantic segmentation of very large images with CNNs, in napari and headless.

The public API is imported lazily so that ``import napari_semseg`` (e.g. by napari's plugin
discovery) stays cheap::

    from napari_semseg import build_model, load_model, save_model, segment, train, evaluate
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

try:
    from importlib.metadata import version as _version

    __version__ = _version("napari-semseg")
except Exception:  # pragma: no cover - running from a source tree without installation
    __version__ = "0.0.0"

_API = {
    "build_model": "napari_semseg.core.models",
    "save_model": "napari_semseg.core.models",
    "load_model": "napari_semseg.core.models",
    "read_metadata": "napari_semseg.core.models",
    "SemSegModel": "napari_semseg.core.models",
    "ModelMetadata": "napari_semseg.core.models",
    "segment": "napari_semseg.core.predict",
    "iter_segment": "napari_semseg.core.predict",
    "SegmentationResult": "napari_semseg.core.writers",
    "PredictSettings": "napari_semseg.core.settings",
    "TrainSettings": "napari_semseg.core.settings",
    "open_image": "napari_semseg.core.io",
    "estimate_normalization": "napari_semseg.core.normalize",
    "Normalization": "napari_semseg.core.normalize",
    "SemSegError": "napari_semseg.core.errors",
    "Cancelled": "napari_semseg.core.errors",
    "train": "napari_semseg.core.train",
    "iter_train": "napari_semseg.core.train",
    "evaluate": "napari_semseg.core.evaluate",
    "train_generator": "napari_semseg.core.generation.train",
    "iter_train_generator": "napari_semseg.core.generation.train",
    "synthesize": "napari_semseg.core.generation.synthesize",
    "iter_synthesize": "napari_semseg.core.generation.synthesize",
    "build_generator": "napari_semseg.core.generation.model_file",
    "save_generator": "napari_semseg.core.generation.model_file",
    "load_generator": "napari_semseg.core.generation.model_file",
    "read_generator_metadata": "napari_semseg.core.generation.model_file",
    "GeneratorModel": "napari_semseg.core.generation.model_file",
    "GeneratorMetadata": "napari_semseg.core.generation.model_file",
    "GeneratorSettings": "napari_semseg.core.generation.settings",
    "SynthesizeSettings": "napari_semseg.core.generation.settings",
    "SynthesisResult": "napari_semseg.core.generation.sinks",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'napari_semseg' has no attribute {name!r}")
