"""Probe: the CNN (ImageNet start, 120 s), a decoder-only CNN and the feature heads, alone and
averaged in pairs, on the scribble benchmark's strokes and held-out images.

Fit step (wall-clock: run it alone on the machine)::

    python benchmarks/probes/ensemble.py fit em,hotosm,usiigaci,aerial 0 head,head_deep,cnn,frozen

caches each model's class probabilities of the held-out images in ``--cache``; the score step
averages every pair and prints the mean IoU of each model and pair over the seeds::

    python benchmarks/probes/ensemble.py score em,hotosm,usiigaci,aerial 0,1

Variants: ``head`` (the quick first answer's head, unbudgeted), ``head_deep`` (the deep
candidate), ``cnn`` (``train(..., first_answer=False)``, ImageNet start), ``frozen`` (the same
with the encoder fixed for 99 % of the run and its BatchNorm in eval mode: a decoder-only CNN).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench_scribbles as B  # noqa: E402

CNN = {"cnn": {}, "frozen": {"frozen_encoder": 0.99, "encoder_bn": "frozen"}}
CACHE = "/tmp/napari-semseg-probe-ensemble"


def cached(cache: Path, name: str, seed: int) -> dict[str, list[np.ndarray]]:
    """The cached class probabilities (uint8, K x H x W per held-out image) of every variant
    fitted on data set ``name`` with ``seed``."""
    out = {}
    for f in sorted(cache.glob(f"{name}_{seed}_*.npz")):
        z = np.load(f)
        out[f.stem.split("_", 2)[2]] = [z[k] for k in z.files]
    return out


def fit(sets: list[str], seed: int, variants: list[str], cache: Path) -> None:
    from napari_semseg import segment
    from napari_semseg import train as train_model
    from napari_semseg.core.first_answer.api import fit_feature_head
    from napari_semseg.core.training.callbacks.first_answer import DEEP_TAPS, encoder_state

    for name in sets:
        d = B.prepare(name, 6)
        imgs = [i for i, _ in d["train"]]
        for v in variants:
            path = cache / f"{name}_{seed}_{v}.npz"
            if path.exists():
                continue
            t0 = time.perf_counter()
            if v.startswith("head"):
                opts = {"taps": DEEP_TAPS} if v == "head_deep" else {}
                m = fit_feature_head(imgs, d["labels"], encoder_state=encoder_state(None),
                                     class_names=d["names"], seed=seed, **opts)
            else:
                m = train_model(imgs, d["labels"], time_budget=120, device="cpu",
                                class_names=d["names"], encoder="mobilenet_v2",
                                encoder_weights="mobilenet_v2-imagenet", first_answer=False,
                                seed=seed, **CNN[v])
            t1 = time.perf_counter()
            probs = [np.asarray(segment(img, m, device="cpu", probabilities=True).probabilities)
                     for img, _ in d["test"]]
            np.savez_compressed(path, *probs)
            print(name, seed, v, "fit", round(t1 - t0, 1), "predict",
                  round(time.perf_counter() - t1, 1), "steps", m.metadata.training.get("steps"),
                  flush=True)


def score(sets: list[str], seeds: list[int], cache: Path) -> None:
    for name in sets:
        ds = B.DATASETS[name]
        test = [B.load(i) for i in B.test_items(ds)[:6]]
        rows: dict[str, list[float]] = {}
        for seed in seeds:
            probs = {v: [p.astype(np.float32) for p in ps]
                     for v, ps in cached(cache, name, seed).items()}
            combos = dict(probs)
            for a, b in itertools.combinations(list(probs), 2):
                combos[f"{a}+{b}"] = [x + y for x, y in zip(probs[a], probs[b], strict=True)]
            for v, ps in combos.items():
                preds = [p.argmax(0) + 1 for p in ps]
                rows.setdefault(v, []).append(B.score(preds, test, ds["names"])["mean_iou"])
        ranked = sorted(rows.items(), key=lambda kv: -np.mean(kv[1]))
        print(name, {k: [round(float(np.mean(v)), 3), [round(x, 3) for x in v]]
                     for k, v in ranked})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("fit", "score"))
    ap.add_argument("sets")
    ap.add_argument("seeds")
    ap.add_argument("variants", nargs="?", default="head,head_deep,cnn,frozen")
    ap.add_argument("--cache", default=CACHE)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    sets = args.sets.split(",")
    if args.step == "fit":
        fit(sets, int(args.seeds), args.variants.split(","), cache)
    else:
        score(sets, [int(s) for s in args.seeds.split(",")], cache)


if __name__ == "__main__":
    main()
