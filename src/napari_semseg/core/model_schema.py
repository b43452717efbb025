"""The schema of a model file's metadata: types, ranges, colours and format version.

:func:`metadata_problem` returns what is wrong with a :class:`~.models.ModelMetadata` (or "");
models are checked when loaded and before they are saved, so a hand-edited or damaged header
(NaN or zero normalization scale, fewer class names than classes, a colour that is not
``#rrggbb``, an unknown format version) is refused with one line instead of producing
garbage or a traceback later.
"""

from __future__ import annotations

import math
import re
from typing import Any

FORMAT_PREFIX = "napari-semseg/"
KNOWN_FORMATS = ("napari-semseg/1",)
COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
NORMALIZATION_MODES = ("percentile", "meanstd", "none")
MAX_CHANNELS, MAX_CLASSES = 1024, 65535


def _whole(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _names(values: Any, n: int, what: str, pattern: re.Pattern | None = None) -> str:
    if not isinstance(values, list) or len(values) != n:
        count = len(values) if isinstance(values, list) else "no list of"
        return f"{what} has {count} entries for {n}"
    for v in values:
        if not isinstance(v, str) or (pattern is not None and not pattern.match(v)):
            return f"{what} holds {v!r}" + (", not a #rrggbb colour" if pattern else "")
    return ""


def _normalization_problem(norm: Any, channels: int) -> str:
    if norm is None:
        return ""
    if norm.mode not in NORMALIZATION_MODES:
        return f"normalization mode {norm.mode!r} is not one of {', '.join(NORMALIZATION_MODES)}"
    if norm.mode == "none":
        return ""
    for name in ("offset", "scale"):
        values = getattr(norm, name)
        if not isinstance(values, list) or len(values) != channels:
            return f"normalization {name} needs one number per channel ({channels})"
        if not all(_finite(v) for v in values):
            return f"normalization {name} holds a value that is not a finite number: {values}"
    if any(v == 0 for v in norm.scale):
        return f"normalization scale holds 0: {norm.scale}"
    clip = norm.clip
    if clip is not None and not (isinstance(clip, list) and len(clip) == 2
                                 and all(_finite(v) for v in clip) and clip[0] < clip[1]):
        return f"normalization clip must be two numbers, low < high, got {clip}"
    return ""


def _shape_problem(meta: Any) -> str:
    if not (isinstance(meta.arch, str) and meta.arch and isinstance(meta.encoder, str)
            and meta.encoder):
        return "arch and encoder must be names"
    if not _whole(meta.in_channels, 1, MAX_CHANNELS):
        return f"in_channels must be 1 to {MAX_CHANNELS}, got {meta.in_channels!r}"
    if not _whole(meta.classes, 1, MAX_CLASSES):
        return f"classes must be 1 to {MAX_CLASSES}, got {meta.classes!r}"
    for name, lo, hi in (("tile", 32, 1 << 16), ("halo", 0, 1 << 12), ("stride", 1, 256)):
        if not _whole(getattr(meta, name), lo, hi):
            return f"{name} must be a whole number from {lo} to {hi}, got {getattr(meta, name)!r}"
    if meta.pixel_size is not None and not (_finite(meta.pixel_size) and meta.pixel_size > 0):
        return f"pixel_size must be a positive number, got {meta.pixel_size!r}"
    return ""


def metadata_problem(meta: Any) -> str:
    """What is wrong with ``meta`` (a ModelMetadata), in a few words; "" when it is valid."""
    fmt = meta.format
    if not isinstance(fmt, str) or not fmt.startswith(FORMAT_PREFIX):
        return f"format {fmt!r} is not a napari-semseg model format"
    if fmt not in KNOWN_FORMATS:
        return f"format {fmt} is newer than this napari-semseg reads; update napari-semseg"
    problem = _shape_problem(meta)
    if problem:
        return problem
    for values, n, what, pattern in ((meta.channel_names, meta.in_channels, "channel_names", None),
                                     (meta.class_names, meta.classes, "class_names", None),
                                     (meta.class_colors, meta.classes, "class_colors", COLOR)):
        problem = _names(values, n, what, pattern)
        if problem:
            return problem
    for name in ("arch_kwargs", "training", "versions"):
        if not isinstance(getattr(meta, name), dict):
            return f"{name} must be a mapping"
    if meta.start is not None and not isinstance(meta.start, dict):
        return "start must be a mapping"
    return _normalization_problem(meta.normalization, meta.in_channels)
