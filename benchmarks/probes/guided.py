"""Probe: edge-preserving smoothing of class probabilities (a guided filter, He et al. 2013,
with the grey image as guide) as a post-processing step, on the probabilities cached by
``ensemble.py fit``::

    python benchmarks/probes/guided.py em,hotosm 0 cnn,head,head_deep
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_scribbles as B  # noqa: E402
from ensemble import CACHE, cached  # noqa: E402

SETTINGS = [(0, 0.0), (2, 1e-3), (4, 1e-3), (8, 1e-3), (4, 1e-2), (8, 1e-2), (16, 1e-2), (4, 0.1)]


def box(x: torch.Tensor, r: int) -> torch.Tensor:
    return F.avg_pool2d(x, 2 * r + 1, stride=1, padding=r, count_include_pad=False)


def guided(guide: torch.Tensor, p: torch.Tensor, r: int, eps: float) -> torch.Tensor:
    """Guided filter of ``p`` (1, K, H, W) with a grey ``guide`` (1, 1, H, W), radius ``r``."""
    m_i, m_p = box(guide, r), box(p, r)
    a = (box(guide * p, r) - m_i * m_p) / (box(guide * guide, r) - m_i * m_i + eps)
    b = m_p - a * m_i
    return box(a, r) * guide + box(b, r)


def main() -> None:
    torch.set_num_threads(1)
    sets, seeds = sys.argv[1].split(","), [int(s) for s in sys.argv[2].split(",")]
    cache = Path(sys.argv[4] if len(sys.argv) > 4 else CACHE)
    for name in sets:
        ds = B.DATASETS[name]
        test = [B.load(i) for i in B.test_items(ds)[:6]]
        guides = []
        for img, _ in test:
            g = img.astype(np.float32) / 255.0
            guides.append(torch.from_numpy(g.mean(-1) if g.ndim == 3 else g)[None, None])
        res: dict[tuple, list[float]] = {}
        for v in sys.argv[3].split(","):
            for seed in seeds:
                probs = [torch.from_numpy(p.astype(np.float32) / 255)[None]
                         for p in cached(cache, name, seed)[v]]
                for r, eps in SETTINGS:
                    preds = [(p if r == 0 else guided(g, p, r, eps))[0].argmax(0).numpy() + 1
                             for g, p in zip(guides, probs, strict=True)]
                    res.setdefault((v, r, eps), []).append(
                        B.score(preds, test, ds["names"])["mean_iou"])
        for key, runs in res.items():
            print(name, key, round(float(np.mean(runs)), 3), flush=True)


if __name__ == "__main__":
    main()
