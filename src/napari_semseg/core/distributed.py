"""Segmentation on a dask.distributed cluster (LocalCluster, SLURM/PBS via dask-jobqueue, ...).

The client checks everything and plans the run exactly as a local run would (same tile grid,
same output chunks, same ``<output>.partial`` store), then splits the chunks still to do into
rectangular blocks and submits one task per block. Each worker

* loads the model once from the model *file* (a per-process cache keyed by path and digest;
  a model object given by the caller is broadcast once to the workers as safetensors bytes), so
  weights never travel with the tasks;
* uses its own GPU when it has one (``cuda:<worker index mod GPU count>`` unless
  ``CUDA_VISIBLE_DEVICES`` already gives it one), else the CPU with its share of the cores;
* computes the tiles that cover its block (tiles on a block border are computed by both
  neighbours) and writes finished chunks straight into the zarr store, with a done marker each.

The code lives in :mod:`napari_semseg.core.prediction` (``blocks``, ``worker``,
``distributed``); this module is its public face.
"""

from __future__ import annotations

from .prediction.blocks import blocks_for, plan_blocks, recomputed_tile_ratio
from .prediction.distributed import (POLL_SECONDS, iter_segment_distributed,
                                     model_path_for_workers)
from .prediction.worker import BlockJob, run_block, worker_device

__all__ = ["POLL_SECONDS", "BlockJob", "blocks_for", "iter_segment_distributed",
           "model_path_for_workers", "plan_blocks", "recomputed_tile_ratio", "run_block",
           "worker_device"]
