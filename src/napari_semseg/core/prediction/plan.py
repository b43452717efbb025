"""Planning a run: tile, overlap, output chunk, batch size and rescaling (before any pixel).

Also the out-of-memory back-off of the plan (:meth:`TilePlan.halved`): a smaller tile on the
same global chunk grid, so that a run continues where it ran out of memory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import SemSegError
from ..io import ImageSource
from ..models import SemSegModel
from ..settings import PredictSettings
from ..tiling import TileGrid, default_margin, normalize_tile, round_up

DEFAULT_CHUNK = 1024  # output chunk edge; a tile is a chunk plus the overlap
# Overlap in units of the network stride. Predictions within about three deepest-level cells
# (3 x 32 pixels for a depth-5 encoder) of a tile edge differ from a whole-image pass (zero
# padding instead of context). With 6 strides of overlap the outer quarter of each tile's band
# gets weight zero and the rest is blended: tiled labels then agree with a whole-image pass on
# >= 99.98 % of pixels (4 strides: 99.93 %, 2 strides: 99.6 %; measured, see
# docs/sections/performance.md).
OVERLAP_STRIDES = 6
# Peak activation memory per input pixel of one tile at inference: 550 B measured for
# Unet-resnet18 in float32 on the CPU, about half with mixed precision; 600 leaves room for
# larger encoders (the OOM back-off corrects a wrong guess).
BYTES_PER_PIXEL_GPU = 600
GPU_TILES = (2048, 1024, 512)  # output chunk edges tried on a GPU, largest first
MAX_GPU_BATCH = 32


@dataclass(frozen=True)
class TilePlan:
    """Resolved tiling of one run.

    Attributes
    ----------
    tile, overlap
        Tile edge and blending overlap in input pixels (multiples of the network stride).
    chunk
        Output chunk edge: the unit that is finished, written and resumed.
    batch_size
        Tiles per forward pass.
    scale
        Network pixels per input pixel (1.0: no rescaling).
    margin
        Zero-weight part of each tile's overlap band.
    """

    tile: int
    overlap: int
    chunk: int
    batch_size: int
    scale: float
    margin: int = 0

    def grid(self, plane_shape: tuple[int, int], stride: int) -> TileGrid:
        """The tile and chunk grid of a plane of ``plane_shape``."""
        return TileGrid.plan(plane_shape, self.tile, self.overlap, stride, self.chunk,
                             self.margin)

    def halved(self, stride: int) -> TilePlan:
        """The plan to try after running out of memory with a batch of one tile: half the tile,
        the overlap at most a quarter of it, the same chunks (raises when nothing smaller fits).
        """
        tile, overlap = halve_tile_size(self.tile, self.overlap, stride)
        margin = self.margin if overlap == self.overlap else default_margin(overlap)
        return replace(self, tile=tile, overlap=overlap, margin=margin)


def free_gpu_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device in bytes."""
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def auto_batch_size(device: torch.device, tile: int, requested: int | None,
                    free_bytes: int | None = None) -> int:
    """Batch size: as requested; 1 on CPU; on GPU as many tiles as half the free memory holds."""
    if requested is not None:
        return int(requested)
    if device.type != "cuda":
        return 1
    free = free_gpu_bytes(device) if free_bytes is None else free_bytes
    return int(max(1, min(MAX_GPU_BATCH, (free * 0.5) // (tile * tile * BYTES_PER_PIXEL_GPU))))


def auto_gpu_tile(free_bytes: int, overlap: int, stride: int) -> int:
    """Largest tile (``chunk + overlap`` for a chunk in :data:`GPU_TILES`) that fits 4 times in
    half the free GPU memory, so that batches of several tiles still fit."""
    for chunk in GPU_TILES:
        tile = round_up(chunk + overlap, stride)
        if 4 * tile * tile * BYTES_PER_PIXEL_GPU <= 0.5 * free_bytes:
            return tile
    return round_up(GPU_TILES[-1] + overlap, stride)


def default_overlap_for(stride: int, halo: int | None = None) -> int:
    """Default blending overlap: 6 network strides, or twice the model's halo if larger."""
    return max(OVERLAP_STRIDES * stride, round_up(2 * (halo or 0), stride))


def halve_tile_size(tile: int, overlap: int, stride: int) -> tuple[int, int]:
    """The next tile (and overlap) to try after running out of memory with one tile."""
    if tile // 2 < 2 * stride:
        raise SemSegError("out of GPU memory even with one small tile; use --device cpu, a "
                          "smaller --tile or a smaller model")
    tile = round_up(tile // 2, stride)
    overlap = min(overlap, max(0, (tile // 4) // stride * stride))
    return tile, overlap


def plan_tiles(source: ImageSource, model: SemSegModel, settings: PredictSettings,
               device: torch.device) -> TilePlan:
    """Resolve tile, overlap, chunk, batch size and rescaling for a run (validates them).

    Defaults: overlap ``max(6 x stride, 2 x halo)`` (192 pixels for smp's usual stride of 32),
    tile = output chunk (the model's ``tile``, else 1024) + overlap. On a CUDA device
    without an explicit tile, the tile is chosen from the free GPU memory (2048-pixel chunks on
    a large GPU) and the batch fills half of what is left.
    """
    meta = model.metadata
    scale = 1.0
    if settings.pixel_size is not None and meta.pixel_size:
        scale = settings.pixel_size / meta.pixel_size
    default_overlap = default_overlap_for(meta.stride, meta.halo)
    default_tile = round_up(meta.tile or DEFAULT_CHUNK, meta.stride) + default_overlap
    free = None
    if device.type == "cuda":
        free = free_gpu_bytes(device)
        if settings.tile is None:
            default_tile = auto_gpu_tile(free, default_overlap, meta.stride)
    if scale != 1.0:  # tiles are given in network pixels; the grid lives in input pixels
        default_tile = round_up(max(2 * meta.stride, int(default_tile / scale)), meta.stride)
        default_overlap = round_up(int(default_overlap / scale), meta.stride)
    tile, overlap = normalize_tile(settings.tile, settings.overlap, meta.stride, default_tile,
                                   default_overlap, source.plane_shape)
    chunk = settings.chunk or max(64, tile - overlap)
    batch = auto_batch_size(device, tile, settings.batch_size, free)
    return TilePlan(tile, overlap, chunk, batch, scale, default_margin(overlap))
