"""First-answer benchmark: the feature-head model (frozen MobileNetV2 features + a light head)
fitted in seconds on seeded scribbles, vs the random forest of the scribble benchmark.

Same data, splits, seeded strokes and random-forest baseline as ``bench_scribbles.py`` (its
functions are reused): ISBI 2012 EM (train slices 0, 4, 8, 12, 16; test 20-29) and Dubai
aerial (train tiles 1-7 part 3; test tile 8). For each training seed:

- **RF**: scikit-image multiscale filters + a 100-tree random forest (ilastik/Labkit recipe);
- **feature head** (one or more variants): :func:`fit_feature_head` with a ``--budget``
  (10 s by default: "the 10-second answer"), then :func:`napari_semseg.segment` (the tiled
  engine) on the held-out images.

Scores are mean IoU against the dense ground truth of the held-out images. Then the time to the
first model on the bundled EM training sample (``em_train.tif`` + ``em_train_scribbles.tif``):
fit (features + head) and the preview segmentation of the slice, ``--repeats`` times, with
``--threads`` torch threads. The load average is recorded (the machine is shared).

The pretrained weights are read from ``--weights`` (the torchvision MobileNetV2 ImageNet file,
checked against its sha256 and opened with ``torch.load(weights_only=True)``).

Usage::

    python benchmarks/bench_first_answer.py                       # both sets, seeds 0 and 1
    python benchmarks/bench_first_answer.py --dataset em --variants default,linear --methods fh
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _scribble_data  # noqa: E402
from bench_scribbles import DATASETS, load, run_rf, score, scribbles_for  # noqa: E402
from common import machine, write_results  # noqa: E402

WEIGHTS = Path("/work/shared/weights/mobilenet_v2-b0353104.pth")
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"

VARIANTS = {
    "default": {},  # scales 1, 2, 4; blocks 1, 3, 6 (strides 2, 4, 8); MLP 32; raw pixels
    "scale1": {"scales": (1,)},
    "scale1-deep": {"scales": (1,), "taps": (1, 3, 6, 10, 13)},
    "scales12": {"scales": (1, 2)},
    "linear": {"hidden": 0},
    "hidden64": {"hidden": 64},
    "no-raw": {"raw": False},
}


def encoder_state(path: Path = WEIGHTS) -> dict[str, torch.Tensor]:
    """The MobileNetV2 ImageNet state dict, after checking the file's sha256 (dev only)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise SystemExit(f"{path} has sha256 {digest}, expected {WEIGHTS_SHA256}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if k.startswith("features.")}


def run_feature_head(train, labels, test, names, budget, variant, state, seed):
    from napari_semseg import segment
    from napari_semseg.core.first_answer.api import fit_feature_head

    t0 = time.perf_counter()
    model = fit_feature_head([img for img, _ in train], labels, time_budget=budget,
                             encoder_state=state, class_names=names, seed=seed,
                             **VARIANTS[variant])
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = [np.asarray(segment(img, model, device="cpu").labels) for img, _ in test]
    tr = model.metadata.training
    return preds, {"fit_s": round(t_fit, 2), "predict_s": round(time.perf_counter() - t0, 1),
                   "features_s": tr["features_s"], "head_s": tr["fit_s"],
                   "windows": f"{tr['windows']}/{tr['windows_total']}",
                   "sampled_pixels": tr["sampled_pixels"], "steps": tr["steps"],
                   "train_accuracy": tr["train_accuracy"],
                   "parameters": int(sum(p.numel() for p in model.parameters()))}


def time_to_first_model(state, variant: str, repeats: int) -> dict:
    """Fit on the bundled EM training sample, then segment it (the preview), ``repeats`` times."""
    import tifffile

    from napari_semseg import segment
    from napari_semseg.core.first_answer.api import fit_feature_head
    from napari_semseg.sample_data import sample_path

    image = tifffile.imread(sample_path("em_train.tif"))
    strokes = tifffile.imread(sample_path("em_train_scribbles.tif"))
    runs = []
    for r in range(repeats):
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        model = fit_feature_head(image, strokes, encoder_state=state,
                                 class_names=["membrane", "interior"], seed=r,
                                 **VARIANTS[variant])
        t_fit = time.perf_counter() - t0
        t1 = time.perf_counter()
        segment(image, model, device="cpu")
        t_pred = time.perf_counter() - t1
        tr = model.metadata.training
        runs.append({"fit_s": round(t_fit, 3), "features_s": tr["features_s"],
                     "head_s": tr["fit_s"], "preview_s": round(t_pred, 3),
                     "first_answer_s": round(t_fit + t_pred, 3), "load_average": load0})
    med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    return {"variant": variant, "median": med, "runs": runs}


def evaluate_dataset(name, methods, variants, seeds, budget, state, test_limit) -> dict:
    ds = DATASETS[name]
    train = [load(i) for i in ds["train"]]
    test = [load(i) for i in ds["test"][:test_limit]]
    labels = scribbles_for(ds, train)
    entry = {"title": ds["title"], "runs": {}}
    jobs = (["rf"] if "rf" in methods else []) + ([f"fh:{v}" for v in variants]
                                                  if "fh" in methods else [])
    for job in jobs:
        entry["runs"][job] = []
        for seed in seeds:
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            if job == "rf":
                preds, info = run_rf(train, labels, test, seed=seed)
            else:
                preds, info = run_feature_head(train, labels, test, ds["names"], budget,
                                               job[3:], state, seed)
            res = score(preds, test, ds["names"])
            res.update(info, seed=seed, load_average=os.getloadavg()[0])
            entry["runs"][job].append(res)
            print(f"{name} {job} seed {seed}: mean IoU {res['mean_iou']:.4f} "
                  f"({time.perf_counter() - t0:.0f} s) {json.dumps(info)}", flush=True)
    return entry


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# First answer: feature head (frozen MobileNetV2 + light head) vs random forest", "",
             f"{m['cpu']}, {results['threads']} torch threads, load average at start "
             f"{m['load_average'][0]:.1f} (shared machine); fit budget {results['budget_s']} s; "
             f"seeds {results['seeds']}. Mean IoU on the held-out images; per seed in "
             "brackets.", "", "| data set | method | mean IoU | per seed | vs RF | fit s | "
             "features s | head s | pixels | predict s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["datasets"].values():
        rf = r["runs"].get("rf")
        rf_mean = float(np.mean([x["mean_iou"] for x in rf])) if rf else None
        for job, runs in r["runs"].items():
            mean = float(np.mean([x["mean_iou"] for x in runs]))
            per = ", ".join(f"{x['mean_iou']:.3f}" for x in runs)
            diff = f"{mean - rf_mean:+.3f}" if rf_mean is not None and job != "rf" else "-"
            fit = np.mean([x.get("fit_s", x.get("train_s", 0)) for x in runs])
            g = lambda k: (f"{np.mean([x[k] for x in runs]):.2f}" if k in runs[0] else "-")  # noqa
            lines.append(f"| {r['title']} | {job} | {mean:.3f} | {per} | {diff} | {fit:.1f} | "
                         f"{g('features_s')} | {g('head_s')} | {g('sampled_pixels')} | "
                         f"{g('predict_s')} |")
    t = results.get("first_model")
    if t:
        med = t["median"]
        lines += ["", f"Time to the first model on the bundled EM training sample (512x512, 1.6 % "
                  f"painted; variant {t['variant']}; median of {len(t['runs'])}, "
                  f"{results['threads']} threads): fit {med['fit_s']:.2f} s (features "
                  f"{med['features_s']:.2f} s + head {med['head_s']:.2f} s), preview "
                  f"segmentation {med['preview_s']:.2f} s, first answer shown after "
                  f"{med['first_answer_s']:.2f} s (load average {med['load_average']:.1f})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("em", "aerial", "both", "none"), default="both")
    ap.add_argument("--methods", default="rf,fh")
    ap.add_argument("--variants", default="default")
    ap.add_argument("--budget", type=float, default=10.0)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timing runs on the EM sample (0: none)")
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--weights", default=str(WEIGHTS))
    ap.add_argument("--data", default=None, help="folder holding isbi2012_em and dubai_aerial")
    ap.add_argument("--output", default="first_answer", help="results name")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    bad = sorted(set(variants) - set(VARIANTS)) + sorted(set(args.methods.split(",")) - {"rf", "fh"})
    if bad:
        ap.error(f"unknown variant(s)/method(s) {', '.join(bad)}; variants: {', '.join(VARIANTS)}")
    if args.data:
        _scribble_data.DATA = Path(args.data)
    elif not _scribble_data.DATA.exists():
        _scribble_data.DATA = Path("/work/shared/data")
    torch.set_num_threads(args.threads)
    state = encoder_state(Path(args.weights))
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {"machine": machine(), "threads": args.threads, "budget_s": args.budget,
               "seeds": seeds, "variants": {v: VARIANTS[v] for v in variants}, "datasets": {}}
    names = {"both": ["em", "aerial"], "none": []}.get(args.dataset, [args.dataset])
    for name in names:
        results["datasets"][name] = evaluate_dataset(name, args.methods.split(","), variants,
                                                     seeds, args.budget, state, args.test_limit)
    if args.repeats:
        results["first_model"] = time_to_first_model(state, variants[0], args.repeats)
    if args.no_write:
        print(markdown(results))
    else:
        write_results(args.output, results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
