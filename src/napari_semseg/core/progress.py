"""Progress events shared by every long job, and the helper that drives a job generator.

A job (prediction, training) is a generator that yields progress events and *returns* its result.
The API, the CLI (tqdm) and the napari thread workers all consume the same generator.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class ChunkResult:
    """One finished output chunk.

    Attributes
    ----------
    plane : int
        Index of the 2D plane (0 for a 2D image; flat index over Z/T for stacks).
    region : tuple of slice
        ``(rows, cols)`` of the chunk in the plane.
    labels : numpy.ndarray
        Class labels 1..K (uint8 or uint16).
    probabilities, uncertainty : numpy.ndarray or None
        Quantized uint8 probabilities ``(C, h, w)`` and normalized entropy ``(h, w)``.
    """

    plane: int
    region: tuple[slice, slice]
    labels: Any
    probabilities: Any = None
    uncertainty: Any = None


@dataclass
class PredictProgress:
    """Progress of a segmentation job."""

    done: int
    total: int
    chunks: list[ChunkResult] = field(default_factory=list)
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def drive(job: Generator[Any, None, T], callback: Callable[[Any], Any] | None = None) -> T:
    """Run a job generator to completion and return its result.

    Parameters
    ----------
    job
        A generator that yields progress events and returns a result.
    callback
        Called with every progress event. If it returns ``False`` the job is closed (cancelled)
        and :class:`~napari_semseg.core.errors.Cancelled` is raised.
    """
    from .errors import Cancelled

    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if callback is not None and callback(event) is False:
            job.close()
            raise Cancelled("stopped by the caller")
