"""Save a result Labels layer to a file from the Segment widget ("Save labels…"), in a worker.

The file is written by the plugin's writer (:func:`napari_semseg._napari.writer.write_labels`:
tiled TIFF or OME-Zarr, block by block, with class names, colours, scale and geo tags). An
existing file is never replaced without consent: the file dialog asks, a script passes
``overwrite=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import SemSegError
from ._jobs import Job, Outcome

SUFFIXES = (".tif", ".tiff", ".zarr", ".ome.zarr")


class LabelsSaver:
    """Runs one save at a time; ``report(text, ok)`` tells the widget how it went."""

    def __init__(self, report: Callable[[str, bool], None]) -> None:
        self.report = report
        self.job: Job | None = None

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def save(self, layer: Any, path: str | Path, overwrite: bool = False) -> Job:
        """Start writing ``layer`` to ``path``; SemSegError (one line) if it cannot start."""
        from .writer import write_labels

        p = Path(path)
        if not p.name.lower().endswith(SUFFIXES):
            raise SemSegError(f"cannot save '{p.name}': name the file .tif or .ome.zarr")
        if p.exists() and not overwrite:
            raise SemSegError(f"'{p}' exists already; choose another file name")
        if self.running:
            raise SemSegError("a save is already running; wait for it to finish")
        data, meta, _ = layer.as_layer_data_tuple()  # read on the main thread

        def job(should_stop: Callable[[], bool]) -> Any:
            yield None
            written = write_labels(str(p), data, meta)
            if not written:
                raise SemSegError(f"cannot save '{p.name}': name the file .tif or .ome.zarr")
            return written[0]

        self.job = Job(job, lambda _e: None, self._done).start()
        return self.job

    def _done(self, outcome: Outcome) -> None:
        if outcome.ok:
            self.report(f"labels saved to {outcome.result}", True)
        elif outcome.cancelled:
            self.report("saving was interrupted; the file may be incomplete", False)
        else:
            self.report(f"cannot save the labels: {outcome.error}", False)

    def shutdown(self) -> None:
        """Wait for a running save (writing is not interrupted halfway)."""
        if self.job is not None and self.job.running:
            self.job._ended.wait()
            self.job.shutdown()
