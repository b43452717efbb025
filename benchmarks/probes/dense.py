"""Probe: the ceiling of the scribble benchmark's CNN: the same 120 s from the ImageNet start,
trained on the *dense* masks of the training images instead of the strokes::

    python benchmarks/probes/dense.py em,hotosm,usiigaci 0
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_scribbles as B  # noqa: E402


def main() -> None:
    from napari_semseg import segment
    from napari_semseg import train as train_model

    torch.set_num_threads(2)
    for name in sys.argv[1].split(","):
        d = B.prepare(name, 6)
        imgs = [i for i, _ in d["train"]]
        dense = [np.where(lab == 255, 0, lab).astype(np.uint8) for _, lab in d["train"]]
        for seed in (int(s) for s in sys.argv[2].split(",")):
            m = train_model(imgs, dense, time_budget=120, device="cpu", class_names=d["names"],
                            encoder="mobilenet_v2", encoder_weights="mobilenet_v2-imagenet",
                            first_answer=False, seed=seed)
            preds = [np.asarray(segment(img, m, device="cpu").labels) for img, _ in d["test"]]
            s = B.score(preds, d["test"], d["names"])
            print(name, "dense imagenet cnn", seed, round(s["mean_iou"], 3),
                  {k: round(v, 3) for k, v in s["iou"].items()}, m.metadata.training.get("steps"),
                  flush=True)


if __name__ == "__main__":
    main()
