"""Adversarial training vs plain training vs a pseudo-label control, on the scribble setup.

Same data and seeded scribbles as ``bench_scribbles.py`` (ISBI 2012 EM, Dubai aerial), plus the
dense masks of the same images (``--labels dense``). For each seed, four trainings with the same
number of optimizer steps (``--epochs`` x ``--steps-per-epoch``; a fixed step count rather than a
wall-clock budget because this benchmark was run on a shared, heavily loaded CPU where wall-clock
budgets give each run a different amount of compute; the time each run took is recorded):

- ``plain``: the library defaults;
- ``adversarial``: ``adversarial=λ`` (spectral-norm discriminator, 1:1 updates);
- ``adversarial+pseudo``: plus pseudo-labels from the discriminator's confidence;
- ``pseudo`` (the non-adversarial control): pseudo-labels from softmax confidence > 0.9.

Scored by mean IoU against the full ground truth of held-out images; results go to
``benchmarks/results/adversarial.json`` and ``.md`` (mean and min-max over seeds, and the
difference to the control).

Usage::

    python benchmarks/bench_adversarial.py --seeds 0,1 --epochs 6 --test-limit 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _scribble_data
from bench_scribbles import DATASETS, load, score, scribbles_for
from common import previous_sets

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = {
    "plain": {},
    "adversarial": {"adversarial": None},
    "adversarial+pseudo": {"adversarial": None, "pseudo_labels": True},
    "pseudo": {"pseudo_labels": True},
}


def use_data_folder() -> Path:
    """The benchmark data: ``SEMSEG_BENCH_DATA``, else ../shared/data, else /work/shared/data."""
    for candidate in (os.environ.get("SEMSEG_BENCH_DATA"), _scribble_data.DATA,
                      "/work/shared/data"):
        if candidate and Path(candidate).exists():
            _scribble_data.DATA = Path(candidate)
            return Path(candidate)
    raise SystemExit("benchmark data not found; set SEMSEG_BENCH_DATA")


def run_one(train, labels, test, names, options, seed):
    from napari_semseg import segment
    from napari_semseg import train as train_model

    t0 = time.perf_counter()
    model = train_model([img for img, _ in train], labels, device="cpu", class_names=names,
                        seed=seed, **options)
    seconds = time.perf_counter() - t0
    preds = [np.asarray(segment(img, model, device="cpu").labels) for img, _ in test]
    res = score(preds, test, names)
    res.update(train_s=round(seconds, 1), steps=model.metadata.training["steps"])
    return res


def summarize(runs: list[dict]) -> dict:
    values = [r["mean_iou"] for r in runs]
    return {"mean_iou": float(np.mean(values)), "min": float(np.min(values)),
            "max": float(np.max(values)), "runs": values,
            "train_s": float(np.mean([r["train_s"] for r in runs])),
            "steps": int(runs[0]["steps"])}


def markdown(results: dict) -> str:
    lines = ["# Adversarial training benchmark", "",
             f"{results['machine']}; {results['steps']} steps per run (patch "
             f"{results['options']['patch_size']}, batch {results['options']['batch_size']}), "
             f"λ = {results['weight']}; seeds {results['seeds']}; {results['test_images']} "
             f"held-out images per set; load average at start {results['load']}.", "",
             "| data set | labels | " + " | ".join(METHODS) + " | best adversarial - control |",
             "|---|---|" + "---|" * (len(METHODS) + 1)]
    for _key, entry in results["sets"].items():
        cells = []
        for m in METHODS:
            v = entry[m]
            cells.append(f"{v['mean_iou']:.3f} ({v['min']:.3f}-{v['max']:.3f}), "
                         f"{v['train_s']:.0f} s")
        best = max(entry["adversarial"]["mean_iou"], entry["adversarial+pseudo"]["mean_iou"])
        lines.append(f"| {entry['title']} | {entry['labels']} | " + " | ".join(cells)
                     + f" | {best - entry['pseudo']['mean_iou']:+.3f} |")
    lines += ["", "Mean IoU on the held-out images (min-max over seeds), mean training time."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="em,aerial")
    ap.add_argument("--labels", default="scribbles", help="scribbles, dense or both")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps-per-epoch", type=int, default=20)
    ap.add_argument("--patch-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--weight", type=float, default=0.05, help="λ of the adversarial term")
    ap.add_argument("--test-limit", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--output", default=str(RESULTS / "adversarial"))
    ap.add_argument("--merge", action="store_true",
                    help="keep the other data sets already in --output's JSON")
    args = ap.parse_args(argv)
    use_data_folder()
    torch.set_num_threads(int(os.environ.get("SEMSEG_BENCH_THREADS", "1")))
    seeds = [int(s) for s in args.seeds.split(",")]
    options = {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
               "patch_size": args.patch_size, "batch_size": args.batch_size,
               "encoder": "mobilenet_v2"}
    methods = args.methods.split(",")
    results = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
               "load": round(os.getloadavg()[0], 1), "seeds": seeds, "weight": args.weight,
               "steps": args.epochs * args.steps_per_epoch, "options": options,
               "test_images": args.test_limit, "sets": {}}
    kinds = ["scribbles", "dense"] if args.labels == "both" else [args.labels]
    results["sets"] = previous_sets(args.output, args.merge)
    for name in args.datasets.split(","):
        ds = DATASETS[name]
        train = [load(i) for i in ds["train"]]
        test = [load(i) for i in ds["test"][:args.test_limit]]
        for kind in kinds:
            labels = scribbles_for(ds, train) if kind == "scribbles" else [m for _, m in train]
            entry = {"title": ds["title"], "labels": kind}
            for method in methods:
                extra = {k: (args.weight if v is None else v)
                         for k, v in METHODS[method].items()}
                runs = []
                for seed in seeds:
                    res = run_one(train, labels, test, ds["names"], {**options, **extra}, seed)
                    runs.append(res)
                    print(f"{name} {kind} {method} seed {seed}: {res['mean_iou']:.4f} "
                          f"({res['train_s']} s)", flush=True)
                entry[method] = summarize(runs)
            results["sets"][f"{name}/{kind}"] = entry
            out = Path(args.output)
            out.with_suffix(".json").write_text(json.dumps(results, indent=1))
            if all(m in entry for m in METHODS):
                out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results) if all(all(m in e for m in METHODS)
                                   for e in results["sets"].values()) else results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
