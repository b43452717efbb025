"""Cutting the chunk grid of a plane into rectangular blocks, one cluster task each.

Tiles on block borders are computed by both neighbouring blocks, so blocks are made as large
and square as the wanted number of blocks allows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def _block_shapes(counts: tuple[int, int], n_blocks: int) -> Iterable[tuple[int, int, int, int]]:
    """``(tiles, blocks, block rows, block cols)`` of every block shape giving at least
    ``n_blocks`` blocks; ``tiles`` counts the border tiles computed twice."""
    rows, cols = counts
    for bh in range(1, rows + 1):
        for bw in range(1, cols + 1):
            nr, nc = math.ceil(rows / bh), math.ceil(cols / bw)
            if nr * nc >= n_blocks:
                # a block needs one more tile row/column than it has chunks, except at the
                # image's top/left edge
                yield (rows + nr - 1) * (cols + nc - 1), nr * nc, bh, bw


def plan_blocks(chunks: Iterable[tuple[int, int]], counts: tuple[int, int],
                n_blocks: int) -> list[list[tuple[int, int]]]:
    """Group chunks into rectangular blocks of the chunk grid (``counts`` = rows, cols).

    Among block shapes giving at least ``n_blocks`` blocks, the one with the fewest tiles in
    total (a block of ``h x w`` chunks needs ``(h + 1) x (w + 1)`` tiles, one row/column less at
    the image's top/left edge); ties go to more, then squarer blocks. Blocks list their chunks in
    raster order; empty blocks are dropped.
    """
    chunks = sorted(set(chunks))
    if not chunks:
        return []
    n_blocks = max(1, min(n_blocks, len(chunks)))
    best = min(((cost, -nb, abs(bh - bw), bh, bw)
                for cost, nb, bh, bw in _block_shapes(counts, n_blocks)), default=None)
    bh, bw = (best[3], best[4]) if best is not None else (1, 1)
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for ci, cj in chunks:
        groups.setdefault((ci // bh, cj // bw), []).append((ci, cj))
    return [groups[k] for k in sorted(groups)]


def recomputed_tile_ratio(counts: tuple[int, int], n_blocks: int) -> float:
    """Tiles computed (relative to a local run) when the chunk grid is cut into ``n_blocks``."""
    rows, cols = counts
    best = min((tiles for tiles, *_ in _block_shapes(counts, n_blocks)), default=math.inf)
    return best / (rows * cols)


def blocks_for(counts: tuple[int, int], n_threads: int, per_thread: int = 4,
               max_extra: float = 0.10) -> int:
    """How many blocks to cut a plane into: up to ``per_thread`` per worker thread (balance,
    finer resume), as long as the tiles computed twice on block borders stay within
    ``max_extra`` (10 %) of the plane's tiles; at least one block per worker thread."""
    n_chunks = counts[0] * counts[1]
    for k in range(per_thread, 1, -1):
        n = k * n_threads
        if n <= n_chunks and recomputed_tile_ratio(counts, n) <= 1 + max_extra:
            return n
    return max(1, min(n_threads, n_chunks))
