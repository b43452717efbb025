"""A prepared run: every input checked and the plan resolved before any tile is read."""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..device import resolve_device
from ..errors import SemSegError, SemSegWarning
from ..io import ImageSource, check_finite, open_image
from ..models import SemSegModel, as_model
from ..normalize import Normalization, estimate_normalization
from ..settings import PredictSettings
from ..tiling import TileGrid
from ..writers import (OutputLayout, SegmentationResult, Sink, check_output, fingerprint_text,
                       is_complete, make_sink, recorded_fingerprint)
from .input_check import input_warnings, sample_windows
from .plan import TilePlan, plan_tiles

# per model: (the key of the weights and metadata hashed, their digest)
_DIGESTS: weakref.WeakKeyDictionary[SemSegModel, tuple[Any, str]] = weakref.WeakKeyDictionary()


def model_digest(model: SemSegModel) -> str:
    """A hash of the weights and metadata (identifies a model for resume); cached on the model
    until a parameter or buffer changes (in place or replaced)."""
    state = model.net.state_dict()
    meta = {k: v for k, v in asdict(model.metadata).items() if k != "versions"}
    key = (repr(sorted(meta.items())),
           tuple((k, v.data_ptr(), v._version) for k, v in state.items()))
    cached = _DIGESTS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    digest = _digest(model)
    _DIGESTS[model] = (key, digest)
    return digest


def _digest(model: SemSegModel) -> str:
    h = hashlib.blake2b(digest_size=16)
    meta = {k: v for k, v in asdict(model.metadata).items() if k != "versions"}
    h.update(repr(sorted(meta.items())).encode())
    for k, v in sorted(model.net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class SegmentJob:
    """Everything a run needs, resolved and validated before any tile is read.

    ``sink`` is where the chunks go when the caller gave one; otherwise :meth:`make_sink` picks
    one for ``output`` (memory, OME-Zarr or TIFF).
    """

    source: ImageSource
    model: SemSegModel
    settings: PredictSettings
    device: torch.device
    plan: TilePlan
    layout: OutputLayout
    normalization: Normalization
    info: dict[str, Any]
    output: Path | None
    sink: Sink | None = None
    warnings: tuple[str, ...] = ()  # the input looks unlike the training data (see input_check)

    @property
    def stride(self) -> int:
        return self.model.metadata.stride

    def grid(self) -> TileGrid:
        """The tile and chunk grid of every plane."""
        return self.plan.grid(self.source.plane_shape, self.stride)

    def make_sink(self) -> Sink:
        if self.sink is not None:
            return self.sink
        return make_sink(self.output, self.layout, self.info, geo_tags=self.source.geo_tags,
                         overwrite=self.settings.overwrite, resume=self.settings.resume)


@contextlib.contextmanager
def _reading(source: ImageSource) -> Iterator[None]:
    """Turn a failure to read the image (a damaged chunk...) into one clear line."""
    try:
        yield
    except SemSegError:
        raise
    except Exception as exc:
        what = source.path or "the image"
        raise SemSegError(f"cannot read {what}: {type(exc).__name__}: {exc}") from exc


def _run_info(source: ImageSource, model: SemSegModel, settings: PredictSettings,
              plan: TilePlan) -> dict[str, Any]:
    """What a run records in its output: classes, model, settings and the resume fingerprint."""
    meta = model.metadata
    digest = model_digest(model)
    return {
        "class_names": meta.class_names, "class_colors": meta.class_colors,
        "model": {"arch": meta.arch, "encoder": meta.encoder, "digest": digest},
        "settings": {**asdict(settings), "tile": plan.tile, "overlap": plan.overlap,
                     "chunk": plan.chunk, "batch_size": plan.batch_size},
        "fingerprint": {
            "input": {"shape": source.shape, "dtype": str(source.dtype),
                      "path": str(source.path.resolve()) if source.path else None,
                      "content": content_digest(source)},
            "model": digest,
            "tiling": [plan.tile, plan.overlap, plan.margin, plan.chunk, plan.scale],
            "outputs": [settings.probabilities, _uncertainty_fingerprint(settings)],
        },
    }


SAMPLE_EDGE = 32  # pixels: the edge of each window the content digest reads
SAMPLE_AT = (0.05, 0.5, 0.95)  # where the windows are, as fractions of the height and width


def content_digest(source: ImageSource) -> str:
    """A digest of the input's content: a file's size and modification time, and 9 small
    windows of its first and last planes (read, not the whole image). A resumed run whose
    input was replaced or edited gets another digest."""
    digest = hashlib.sha256()
    path = Path(source.path) if source.path is not None else None
    if path is not None and path.is_file():
        stat = path.stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    for plane in sorted({0, source.n_planes - 1}):
        with _reading(source):
            for window in sample_windows(source, plane, SAMPLE_EDGE, SAMPLE_AT):
                digest.update(np.ascontiguousarray(window).tobytes())
    return digest.hexdigest()[:20]


def _check_complete_output(output: Path, info: dict[str, Any]) -> None:
    """``--resume`` on a complete output: accepted only when the output records this very run
    (same input content, model, tiling and outputs); else one line saying what to do."""
    recorded = recorded_fingerprint(output)
    if recorded is None:
        raise SemSegError(f"{output} is complete but does not say how it was made (an older or "
                          "foreign file); pass --overwrite (overwrite=True) to recompute it")
    if recorded != fingerprint_text(info):
        raise SemSegError(f"{output} is complete but was made from another input, model or "
                          "output options than this run; pass --overwrite (overwrite=True) to "
                          "recompute it, or choose another output")


def _uncertainty_fingerprint(settings: PredictSettings) -> bool | str:
    """True for entropy (as runs recorded it before there were other kinds), else the kind."""
    kind = settings.uncertainty_kind
    return True if kind == "entropy" else (kind or False)


def _check_destination(output: Any, sink: Sink | None, settings: PredictSettings,
                       source_path: Path | None = None) -> Path | None:
    """The output path, checked (exists, folder writable) before any work; not with a sink."""
    if output is None:
        return None
    if sink is not None:
        raise SemSegError("give either output (a file to write) or sink (an object receiving "
                          "the chunks), not both")
    output = Path(output)
    companions = [name for name, wanted in (("probabilities", settings.probabilities),
                                            ("uncertainty", settings.uncertainty_kind)) if wanted]
    check_output(output, settings.overwrite, settings.resume, inputs=[source_path],
                 companions=companions)
    return output


def prepare(image: Any, model: SemSegModel | str | os.PathLike,
            settings: PredictSettings, output: Any = None, *,
            device: torch.device | None = None,
            sink: Sink | None = None) -> SegmentJob | SegmentationResult:
    """Check every input and resolve the plan; return a :class:`SegmentJob`.

    Returns a :class:`SegmentationResult` without ``labels`` when ``settings.resume`` is set
    and ``output`` is already complete. Raises :class:`SemSegError` for anything a user can fix.
    """
    model = as_model(model)
    meta = model.metadata
    source = open_image(image, settings.channel_axis, expected_channels=meta.in_channels)
    with _reading(source):
        check_finite(source)
    device = resolve_device(settings.device) if device is None else device
    plan = plan_tiles(source, model, settings, device)
    output = _check_destination(output, sink, settings, source.path)
    info = _run_info(source, model, settings, plan)
    if output is not None and settings.resume and is_complete(output):
        _check_complete_output(output, info)
        return SegmentationResult(None, path=output)
    notes: list[str] = []
    if meta.normalization is None:
        with _reading(source):
            norm = estimate_normalization(source)
    else:
        norm = meta.normalization
        with _reading(source):
            notes = input_warnings(source, norm, str(source.path or "the image"), meta.start)
    for note in notes:
        warnings.warn(note, SemSegWarning, stacklevel=2)
    layout = OutputLayout(source.plane_dims, source.plane_shape, plan.chunk, meta.classes,
                          settings.probabilities, settings.uncertainty_kind is not None)
    return SegmentJob(source, model, settings, device, plan, layout, norm, info, output, sink,
                      tuple(notes))
