"""Does the input look like what the model was trained on? A cheap look before the run.

A model learns from normalized pixels (:class:`~napari_semseg.core.normalize.Normalization`);
a model with a fixed normalization (a training set's mean and spread, or a pretrained start's
0-255 range) turns an image of another kind into pixels far outside what it has seen
(uint16 or 0-1 float images given to a uint8 model), and usually answers one class
everywhere. :func:`input_warnings` reads a few small windows, normalizes them as the model
will, and describes, with numbers, an input whose values are squeezed into a sliver of the
expected range or spread far beyond it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..io import ImageSource
from ..normalize import Normalization

WINDOW = 64
AT = (0.1, 0.5, 0.9)
# normalized values the model saw in training (about): meanstd -> a few standard deviations
# around 0, percentile -> 0..1
EXPECTED = {"meanstd": (-3.0, 3.0), "percentile": (0.0, 1.0)}
TOO_WIDE = 4.0  # spread more than this many expected spans
TOO_FLAT = 0.02  # or less than this fraction of one


def sample_windows(source: ImageSource, plane: int, edge: int,
                   at: tuple[float, ...]) -> Iterator[np.ndarray]:
    """The ``(C, h, w)`` windows of ``edge`` pixels at the fractions ``at`` of the plane's
    height and width (a grid of ``len(at)**2``), read one by one."""
    h, w = source.plane_shape
    for fy in at:
        for fx in at:
            y, x = int(max(0, h - edge) * fy), int(max(0, w - edge) * fx)
            yield source.read(plane, slice(y, y + edge), slice(x, x + edge))


def _sample(source: ImageSource) -> np.ndarray:
    """Up to 9 windows of the first plane as ``(C, N)`` float64 values."""
    blocks = [np.asarray(b, np.float64).reshape(b.shape[0], -1)
              for b in sample_windows(source, 0, WINDOW, AT)]
    return np.concatenate(blocks, axis=1)


def _expected_ranges(norm: Normalization, n: int, start: dict[str, Any] | None
                     ) -> list[tuple[float, float]]:
    """The normalized range of the training data, per channel: a percentile normalization
    maps it to about 0-1, then a pretrained start's ``(x - mean) / std`` is folded in."""
    lo, hi = EXPECTED[norm.mode]
    if norm.mode != "percentile" or start is None:
        return [(lo, hi)] * n
    from ..pretrained import channel_statistics

    mean, std = channel_statistics(start, n)
    return [((lo - m) / d, (hi - m) / d) for m, d in zip(mean, std, strict=True)]


def input_warnings(source: ImageSource, norm: Normalization, what: str = "the image",
                   start: dict[str, Any] | None = None) -> list[str]:
    """One line per problem (empty when the input looks like the training data).

    ``start`` is the model's pretrained start (``metadata.start``), whose input statistics
    are folded into a percentile normalization.
    """
    if norm.mode not in EXPECTED or not norm.offset:
        return []
    values = _sample(source)
    offset, scale = norm.arrays(values.shape[0])
    ranges = _expected_ranges(norm, values.shape[0], start)
    out = []
    for c in range(values.shape[0]):
        lo_e, hi_e = ranges[c]
        span = hi_e - lo_e
        raw_lo, raw_hi = np.percentile(values[c], [1, 99])
        lo, hi = ((np.array([raw_lo, raw_hi]) - offset[c, 0, 0]) * scale[c, 0, 0]).tolist()
        middle = (lo_e + hi_e) / 2
        if hi - lo > TOO_WIDE * span or max(abs(lo - middle), abs(hi - middle)) > TOO_WIDE * span:
            problem = "far beyond"
        elif hi - lo < TOO_FLAT * span and raw_hi > raw_lo:
            problem = "in a sliver of"
        else:
            continue
        want_lo = lo_e / scale[c, 0, 0] + offset[c, 0, 0]
        want_hi = hi_e / scale[c, 0, 0] + offset[c, 0, 0]
        channel = f" (channel {c})" if values.shape[0] > 1 else ""
        out.append(f"{what}{channel} looks unlike the model's training data: its values "
                   f"{raw_lo:.4g}..{raw_hi:.4g} ({source.dtype}) lie {problem} the range the "
                   f"model expects (about {want_lo:.4g}..{want_hi:.4g}); the result may be one "
                   "class everywhere: convert the image to the training data's range (e.g. "
                   "8-bit), or use a model trained on such images")
    return out
