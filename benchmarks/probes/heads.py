"""Probe: feature-head settings, fitted without a time budget on the scribble benchmark's
strokes, scored on its held-out images (mean IoU over the seeds)::

    python benchmarks/probes/heads.py em,hotosm,usiigaci,aerial 0,1 all

Each variant changes one or two :class:`~napari_semseg.core.first_answer.fit.FeatureHeadSettings`
fields, for the quick first answer's taps (``default``) and the deep candidate's (``deep``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_scribbles as B  # noqa: E402

VARIANTS = {"base": {}, "steps600": {"steps": 600},
            "px120k": {"max_pixels": 120_000, "steps": 600}, "hidden64": {"hidden": 64},
            "wd0.01": {"weight_decay": 0.01}, "wd1": {"weight_decay": 1.0},
            "scales1248": {"scales": (1, 2, 4, 8)},
            "lr3e-3": {"learning_rate": 3e-3, "steps": 600}}


def main() -> None:
    from napari_semseg import segment
    from napari_semseg.core.first_answer.api import fit_feature_head
    from napari_semseg.core.training.callbacks.first_answer import DEEP_TAPS, encoder_state

    torch.set_num_threads(2)
    sets, seeds = sys.argv[1].split(","), [int(s) for s in sys.argv[2].split(",")]
    chosen = list(VARIANTS) if len(sys.argv) < 4 or sys.argv[3] == "all" else \
        sys.argv[3].split(",")
    weights = encoder_state(None)
    for name in sets:
        d = B.prepare(name, 6)
        imgs = [i for i, _ in d["train"]]
        for taps in ("default", "deep"):
            for v in chosen:
                runs = []
                t0 = time.perf_counter()
                for seed in seeds:
                    opts = {**({"taps": DEEP_TAPS} if taps == "deep" else {}), **VARIANTS[v]}
                    m = fit_feature_head(imgs, d["labels"], encoder_state=weights,
                                         class_names=d["names"], seed=seed, **opts)
                    preds = [np.asarray(segment(img, m, device="cpu").labels)
                             for img, _ in d["test"]]
                    runs.append(B.score(preds, d["test"], d["names"])["mean_iou"])
                print(name, taps, v, round(float(np.mean(runs)), 3), [round(s, 3) for s in runs],
                      round(time.perf_counter() - t0, 1), flush=True)


if __name__ == "__main__":
    main()
