"""First-answer benchmark: the feature-head model (frozen MobileNetV2 features + a light head)
fitted in seconds on seeded scribbles, vs the random forest of the scribble benchmark.

Same data, splits, seeded strokes and random-forest baseline as ``bench_scribbles.py`` (its
functions are reused): ISBI 2012 EM (train slices 0, 4, 8, 12, 16; test 20-29) and Dubai
aerial (train tiles 1-7 part 3; test tile 8). For each training seed:

- **RF**: scikit-image multiscale filters + a 100-tree random forest (ilastik/Labkit recipe);
- **feature head** (one or more variants): :func:`fit_feature_head` with a ``--budget``
  (10 s by default: "the 10-second answer"), then :func:`napari_semseg.segment` (the tiled
  engine) on the held-out images. The budget counts this process's CPU seconds by default
  (``--clock cpu``): the development machine is shared by many jobs, and CPU seconds are what
  a quiet machine would give in that wall time (with one thread; two are faster).

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
import _scribble_data
from bench_scribbles import DATASETS, load, run_rf, score, scribbles_for
from common import machine, write_results

WEIGHTS = Path("/work/shared/weights/mobilenet_v2-b0353104.pth")
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"

VARIANTS = {
    "default": {},  # scales 1, 2, 4 x blocks 0, 1, 3, 6 (strides 2, 2, 4, 8); MLP 32; raw pixels
    "no-budget": {"time_budget": None},  # every sampled pixel: the ceiling of the default
    "light": {"taps": ((0, 1), (0, 1, 3, 6), (0, 1, 3, 6))},  # scale 1 only to stride 2
    "taps136": {"taps": (1, 3, 6)},  # without the stem's output
    "scale1": {"scales": (1,)},
    "scales12": {"scales": (1, 2)},
    "linear": {"hidden": 0},
    "hidden16": {"hidden": 16},
    "no-raw": {"raw": False},
    "weak-decay": {"weight_decay": 1e-4},
    "block512": {"block": 512},
}


def encoder_state(path: Path = WEIGHTS) -> dict[str, torch.Tensor]:
    """The MobileNetV2 ImageNet state dict, after checking the file's sha256 (dev only)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise SystemExit(f"{path} has sha256 {digest}, expected {WEIGHTS_SHA256}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if k.startswith("features.")}


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def run_feature_head(train, labels, test, names, budget, variant, state, seed, clock):
    from napari_semseg import segment
    from napari_semseg.core.first_answer.api import fit_feature_head

    t0 = time.perf_counter()
    options = {"time_budget": budget, **VARIANTS[variant]}
    c0 = time.process_time()
    model = fit_feature_head([img for img, _ in train], labels, encoder_state=state,
                             class_names=names, seed=seed, clock=CLOCKS[clock], **options)
    cpu = time.process_time() - c0
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = [np.asarray(segment(img, model, device="cpu").labels) for img, _ in test]
    tr = model.metadata.training
    return preds, {"fit_s": round(t_fit, 2), "fit_cpu_s": round(cpu, 2), "predict_s": round(time.perf_counter() - t0, 1),
                   "features_s": tr["features_s"], "head_s": tr["fit_s"],
                   "windows": f"{tr['windows']}/{tr['windows_total']}",
                   "sampled_pixels": tr["sampled_pixels"], "steps": tr["steps"],
                   "train_accuracy": tr["train_accuracy"],
                   "parameters": int(sum(p.numel() for p in model.parameters()))}


def time_to_first_model(state, variant: str, repeats: int, threads: int) -> dict:
    """Fit on the bundled EM training sample, then segment it (the preview), ``repeats`` times
    with ``threads`` torch threads; wall and process CPU seconds."""
    import tifffile
    from napari_semseg.sample_data import sample_path

    from napari_semseg import segment
    from napari_semseg.core.first_answer.api import fit_feature_head

    image = tifffile.imread(sample_path("em_train.tif"))
    strokes = tifffile.imread(sample_path("em_train_scribbles.tif"))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    runs = []
    for r in range(repeats):
        load0 = os.getloadavg()[0]
        c0, t0 = time.process_time(), time.perf_counter()
        model = fit_feature_head(image, strokes, encoder_state=state,
                                 class_names=["membrane", "interior"], seed=r,
                                 **VARIANTS[variant])
        c1, t1 = time.process_time(), time.perf_counter()
        segment(image, model, device="cpu")
        c2, t2 = time.process_time(), time.perf_counter()
        tr = model.metadata.training
        runs.append({"fit_s": round(t1 - t0, 3), "features_s": tr["features_s"],
                     "head_s": tr["fit_s"], "preview_s": round(t2 - t1, 3),
                     "first_answer_s": round(t2 - t0, 3), "fit_cpu_s": round(c1 - c0, 3),
                     "preview_cpu_s": round(c2 - c1, 3), "load_average": load0})
    torch.set_num_threads(previous)
    med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    return {"variant": variant, "threads": threads, "median": med, "runs": runs}


def evaluate_dataset(name, methods, variants, seeds, budget, state, test_limit, clock) -> dict:
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
                                               job[3:], state, seed, clock)
            res = score(preds, test, ds["names"])
            res.update(info, seed=seed, load_average=os.getloadavg()[0])
            entry["runs"][job].append(res)
            print(f"{name} {job} seed {seed}: mean IoU {res['mean_iou']:.4f} "
                  f"({time.perf_counter() - t0:.0f} s) {json.dumps(info)}", flush=True)
    return entry


def _row(title: str, job: str, runs: list[dict], rf_mean: float | None) -> str:
    mean = float(np.mean([x["mean_iou"] for x in runs]))
    per = ", ".join(f"{x['mean_iou']:.3f}" for x in runs)
    diff = f"{mean - rf_mean:+.3f}" if rf_mean is not None and job != "rf" else "-"

    def avg(key: str) -> str:
        return f"{np.mean([x[key] for x in runs]):.1f}" if key in runs[0] else "-"

    fit = (f"{avg('fit_cpu_s')} ({avg('fit_s')})" if "fit_s" in runs[0] else avg("train_s"))
    return (f"| {title} | {job} | {mean:.3f} | {per} | {diff} | {fit} | {avg('features_s')} | "
            f"{avg('head_s')} | {avg('sampled_pixels')} | {avg('predict_s')} | "
            f"{avg('load_average')} |")


def _timing_line(t: dict) -> str:
    med = t["median"]
    return (f"Time to the first model on the bundled EM training sample (512x512, 1.6 % painted; "
            f"variant {t['variant']}; median of {len(t['runs'])}, {t['threads']} thread(s), load "
            f"average {med['load_average']:.1f}): fit {med['fit_s']:.2f} s (features "
            f"{med['features_s']:.2f} s + head {med['head_s']:.2f} s; {med['fit_cpu_s']:.2f} CPU "
            f"s), preview segmentation {med['preview_s']:.2f} s ({med['preview_cpu_s']:.2f} CPU "
            f"s): first answer after {med['first_answer_s']:.2f} s.")


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# First answer: feature head (frozen MobileNetV2 + light head) vs random forest", "",
             (f"{m['cpu']}, {m['cores']} cores, {results['threads']} torch thread(s), load "
              f"average at start {m['load_average'][0]:.1f} (shared machine); fit budget "
              f"{results['budget_s']} s ({results['budget_clock']} clock); seeds "
              f"{results['seeds']}. Mean IoU on the held-out images (mean over seeds, then per "
              "seed); fit, features and head in seconds of the budget's clock, fit also in "
              "wall seconds."), "",
             ("| data set | method | mean IoU | per seed | vs RF | fit (wall) s | features s | "
              "head s | pixels | predict s | load |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["datasets"].values():
        rf = r["runs"].get("rf")
        rf_mean = float(np.mean([x["mean_iou"] for x in rf])) if rf else None
        lines += [_row(r["title"], job, runs, rf_mean) for job, runs in r["runs"].items()]
    lines += [line for t in results.get("first_model", []) for line in ("", _timing_line(t))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("em", "aerial", "both", "none"), default="both")
    ap.add_argument("--methods", default="rf,fh")
    ap.add_argument("--variants", default="default,no-budget")
    ap.add_argument("--aerial-variants", default=None, help="default: --variants")
    ap.add_argument("--budget", type=float, default=10.0)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                    help="what the budget counts: this process's CPU seconds (default; on a "
                         "shared machine, the budget a quiet one gives) or wall-clock seconds")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timing runs on the EM sample (0: none)")
    ap.add_argument("--timing-threads", default="2,1", help="torch threads of the timing runs")
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--weights", default=str(WEIGHTS))
    ap.add_argument("--data", default=None, help="folder holding isbi2012_em and dubai_aerial")
    ap.add_argument("--output", default="first_answer", help="results name")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    per_set = {"em": variants, "aerial": (args.aerial_variants or args.variants).split(",")}
    wanted = set(variants + per_set["aerial"])
    bad = sorted(wanted - set(VARIANTS)) + sorted(set(args.methods.split(",")) - {"rf", "fh"})
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
               "budget_clock": args.clock,
               "seeds": seeds, "variants": {v: VARIANTS[v] for v in sorted(wanted)},
               "datasets": {}}
    names = {"both": ["em", "aerial"], "none": []}.get(args.dataset, [args.dataset])
    for name in names:
        results["datasets"][name] = evaluate_dataset(name, args.methods.split(","),
                                                     per_set[name], seeds, args.budget, state,
                                                     args.test_limit, args.clock)
    if args.repeats:
        results["first_model"] = [time_to_first_model(state, variants[0], args.repeats, int(n))
                                  for n in args.timing_threads.split(",")]
    if args.no_write:
        print(markdown(results))
    else:
        write_results(args.output, results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
