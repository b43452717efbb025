"""The entry points: :func:`segment` and the generator :func:`iter_segment` behind it, which runs
a job locally or, with a dask ``client``, on a cluster."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from typing import Any

from ..models import SemSegModel
from ..progress import PredictProgress, drive
from ..settings import PredictSettings, merge
from ..writers import SegmentationResult, Sink
from .distributed import iter_segment_distributed
from .job import prepare
from .local import run_local


def iter_segment(image: Any, model: SemSegModel | str | os.PathLike,
                 settings: PredictSettings | None = None, *, output: Any = None,
                 should_stop: Callable[[], bool] | None = None, client: Any = None,
                 sink: Sink | None = None,
                 **options: Any) -> Generator[PredictProgress, None, Any]:
    """Segment ``image``; yield :class:`PredictProgress` after every batch; return the result.

    Every check (file, model, channels, tile, output) runs before the first tile is read. A run
    that is cancelled (``should_stop`` returns True, or the generator is closed) or fails leaves
    at most a ``<output>.partial`` store (which ``resume=True`` continues), never a file under
    the output name.

    With ``client`` (a ``dask.distributed.Client``) the chunks are computed by the cluster's
    workers (see :mod:`napari_semseg.core.distributed`); progress then counts chunks.

    Parameters are those of :func:`segment`. The result is what the sink's ``finish()``
    returns: a :class:`SegmentationResult` for the built-in sinks.
    """
    settings = merge(PredictSettings, settings, options).validated()
    if client is not None:
        return (yield from iter_segment_distributed(image, model, settings, output=output,
                                                    client=client, should_stop=should_stop,
                                                    sink=sink))
    job = prepare(image, model, settings, output, sink=sink)
    if isinstance(job, SegmentationResult):
        yield PredictProgress(0, 0, message=f"{job.path} is already complete")
        return job
    return (yield from run_local(job, should_stop=should_stop))


def _overrides(settings: PredictSettings | None, options: dict[str, Any]) -> dict[str, Any]:
    """The keyword options that override ``settings``: with settings, only those not left at
    their defaults (the settings keep their values for the others)."""
    if settings is None:
        return options
    defaults = PredictSettings()
    return {k: v for k, v in options.items() if v != getattr(defaults, k)}


def segment(image: Any, model: SemSegModel | str | os.PathLike, *, tile: int | None = None,
            overlap: int | None = None, device: str = "auto", batch_size: int | None = None,
            output: Any = None, probabilities: bool = False, uncertainty: str | bool = "none",
            callback: Callable[[PredictProgress], Any] | None = None,
            settings: PredictSettings | None = None, client: Any = None,
            sink: Sink | None = None, **options: Any) -> Any:
    """Segment an image of any size with a model, tile by tile.

    Parameters
    ----------
    image
        numpy, dask or zarr array, or a path (TIFF/OME-TIFF/GeoTIFF read lazily, zarr/OME-Zarr,
        PNG/JPEG, .npy). 2D, multichannel (channel axis inferred or ``channel_axis=``) or a Z/T
        stack (segmented plane by plane).
    model
        A model from :func:`build_model`/:func:`train`/:func:`load_model`, or a model file path.
    tile, overlap
        Tile edge and blending overlap in pixels (multiples of the network stride). Defaults
        from the model: overlap ``max(6 x stride, 2 x halo)`` and tile = the model's output
        chunk + overlap, i.e. 1216 and 192 for smp's stride of 32 and 1024-pixel chunks (on a
        GPU the tile is chosen from the free memory).
    device
        ``"auto"`` (CUDA, MPS, CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
    batch_size
        Tiles per forward pass (default: 1 on CPU, from free memory on GPU).
    output
        None (return numpy arrays), or a path ending in ``.zarr`` (OME-Zarr with a pyramid) or
        ``.tif`` (tiled BigTIFF; probabilities/uncertainty in ``<name>_probabilities.tif`` ...).
    probabilities
        Also compute class probabilities (uint8).
    uncertainty
        Also compute a per-pixel uncertainty (uint8): ``"entropy"`` (or ``True``),
        ``"margin"`` or ``"tta"`` (with ``tta >= 2``); see :mod:`napari_semseg.core.uncertainty`.
    callback
        Called with each :class:`PredictProgress`; return ``False`` to cancel.
    settings
        A :class:`PredictSettings`; keyword options override its fields.
    client
        A ``dask.distributed.Client``: compute on its workers. The image and the model should
        then be files all workers can read, and ``output`` a zarr path they can write.
    sink
        Instead of ``output``: any object with the :class:`~napari_semseg.core.writers.Sink`
        methods; it receives every finished chunk (``write``, from a background thread), then
        ``finish()`` (whose value is returned) or, on a cancel or an error, ``abort()``.
    **options
        Other :class:`PredictSettings` fields (``chunk``, ``channel_axis``, ``pixel_size``,
        ``overwrite``, ``resume``, ``amp``, ``compile``, ``tta``).

    Returns
    -------
    SegmentationResult
        ``labels`` (classes 1..K), optional ``probabilities`` and ``uncertainty`` (with a
        ``sink``: whatever its ``finish()`` returns).
    """
    options.update(tile=tile, overlap=overlap, device=device, batch_size=batch_size,
                   probabilities=probabilities, uncertainty=uncertainty)
    options = _overrides(settings, options)
    return drive(iter_segment(image, model, settings, output=output, client=client, sink=sink,
                              **options), callback)
