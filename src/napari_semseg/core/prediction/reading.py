"""Reading tiles: only each tile's window of the image, padded beyond the image edge, cast to a
type torch holds, in batches (pinned host memory for a GPU)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from ..errors import SemSegError
from ..io import ImageSource
from ..tiling import TileGrid

NAN_MESSAGE = ("the image contains NaN or infinite pixels; replace them (e.g. with "
               "numpy.nan_to_num) before segmenting")


def torch_ready(block: np.ndarray) -> np.ndarray:
    """Cast dtypes torch cannot hold (uint16, uint32, bool, ...) without losing values."""
    if block.dtype in (np.uint8, np.int8, np.int16, np.int32, np.int64, np.float32, np.float64):
        return block
    if block.dtype == np.float16:
        return block.astype(np.float32)
    return block.astype(np.float32) if block.dtype.itemsize <= 2 else block.astype(np.float64)


def _read_window(source: ImageSource, plane: int, rows: slice, cols: slice) -> np.ndarray:
    """``source.read`` with a failure (a damaged chunk...) turned into one clear line."""
    try:
        return source.read(plane, rows, cols)
    except SemSegError:
        raise
    except Exception as exc:  # a damaged chunk of a file, a network filesystem error...
        where = f" of {source.path}" if source.path else ""
        raise SemSegError(f"cannot read rows {rows.start}-{rows.stop}, columns {cols.start}-"
                          f"{cols.stop} of plane {plane}{where}: {type(exc).__name__}: {exc}"
                          ) from exc


def read_tile(source: ImageSource, plane: int, grid: TileGrid, i: int, j: int) -> np.ndarray:
    """Read tile ``(i, j)``; the part beyond the image (less than one stride) is reflected."""
    block = _read_window(source, plane, *grid.tile_region(i, j))
    th, tw = grid.tile_shape
    pad = ((0, 0), (0, th - block.shape[1]), (0, tw - block.shape[2]))
    if pad[1][1] or pad[2][1]:
        mode: Literal["reflect", "edge", "symmetric"] = "reflect" if min(block.shape[1:]) > 1 else "edge"
        if mode == "reflect" and (pad[1][1] >= block.shape[1] or pad[2][1] >= block.shape[2]):
            mode = "symmetric"
        block = np.pad(block, pad, mode=mode)
    return block


def iter_batches(source: ImageSource, plane: int, grid: TileGrid, tiles: list[tuple[int, int]],
                 batch_size: int, *, pin: bool, check_nan: bool
                 ) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
    """``(tile indices, raw batch)`` for ``tiles`` in groups of ``batch_size``."""
    for b in range(0, len(tiles), batch_size):
        group = tiles[b:b + batch_size]
        first = read_tile(source, plane, grid, *group[0])
        arr = np.empty((len(group),) + first.shape, first.dtype)
        arr[0] = first
        for k, (i, j) in enumerate(group[1:], 1):
            arr[k] = read_tile(source, plane, grid, i, j)
        arr = torch_ready(arr)
        if check_nan and not np.isfinite(arr).all():
            raise SemSegError(NAN_MESSAGE)
        x = torch.from_numpy(arr)
        yield group, (x.pin_memory() if pin else x)
