"""Tiled, out-of-core prediction: the one generator behind the API, the CLI and the widgets.

The engine lives in :mod:`napari_semseg.core.prediction` (plan, tile predictor, chunks,
thread plumbing, local and cluster drivers); this module is its public face.
"""

from __future__ import annotations

from .prediction.api import iter_segment, segment
from .prediction.chunks import (ComputeStep, argmax_classes, compute_chunks, finish_tensors,
                                iter_plane)
from .prediction.job import SegmentJob, model_digest, prepare
from .prediction.local import run_local
from .prediction.pipeline import BackgroundWriter, prefetch
from .prediction.plan import (BYTES_PER_PIXEL_GPU, DEFAULT_CHUNK, GPU_TILES, MAX_GPU_BATCH,
                              OVERLAP_STRIDES, TilePlan, auto_batch_size, auto_gpu_tile,
                              default_overlap_for, halve_tile_size, plan_tiles)
from .prediction.reading import read_tile
from .prediction.tile_predictor import TilePredictor, TileTooLarge

__all__ = [
    "BYTES_PER_PIXEL_GPU", "DEFAULT_CHUNK", "GPU_TILES", "MAX_GPU_BATCH", "OVERLAP_STRIDES",
    "BackgroundWriter", "ComputeStep", "SegmentJob", "TilePlan", "TilePredictor",
    "TileTooLarge", "argmax_classes", "auto_batch_size", "auto_gpu_tile", "compute_chunks",
    "default_overlap_for", "finish_tensors", "halve_tile_size", "iter_plane", "iter_segment",
    "model_digest", "plan_tiles", "prefetch", "prepare", "read_tile", "run_local", "segment",
]
