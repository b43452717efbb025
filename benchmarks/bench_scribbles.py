"""Scribble benchmark: CNNs from different starts trained on seeded brush strokes vs a random forest.

Five data sets, each with its suggested train/test split: ISBI 2012 EM (2 classes; train on
slices 0-19, test on 20-29), Dubai aerial (6 classes, 255 ignored; train on tiles 1-7, test on
tile 8), two sets the generalist encoder never saw: Usiigaci phase-contrast cells (train
set1-45, test set46-50) and HOT fAIr drone buildings (train areas 1-3, test area 4,
Philippines), and DSB 2018 fluorescent nuclei (``dsb``: the first image of each size group of
the train and test splits; the ImageNet start never saw it, the generalist was trained on its
train split). Sparse scribbles are drawn on a few training images with
:func:`napari_semseg.core.scribbles.make_scribbles` (fixed seeds, ~1.5 % of pixels). Then, in
the same run and on the same scribbles, each method is scored by mean IoU against the full
ground truth of (at most ``--test-limit``) held-out images:

- ``rf``: the ilastik/Labkit-style baseline, scikit-image ``multiscale_basic_features``
  (sigma 0.5-16) and a scikit-learn ``RandomForestClassifier`` (100 trees), not time-limited;
- ``random``: :func:`napari_semseg.train` with the old default (Unet-resnet18, depth 4,
  random initialisation), ``--budget`` seconds, the CNN alone (``first_answer=False``);
- ``imagenet``: the same budget, Unet-MobileNetV2 (depth 4) from the bundled ImageNet start;
- ``generalist``: the same from the bundled generalist start (when it is installed);
- ``default``: ``train(..., time_budget=budget)`` with the library defaults (what a user
  gets): the first answer, then the CNN; the model that validates better is returned;
- ``answer10``: ``train(..., time_budget=10)`` with the library defaults: the first answer
  (feature head), then the CNN, whichever validates better is returned.

Each CNN run records steps, patches/s, the training time and the time to its first preview
(the first progress event that carries a model). The machine may be shared: the load average
(``os.getloadavg()``) is recorded with every run. Results go to
``benchmarks/results/scribbles.json`` and ``.md``; ``--merge`` adds to an existing JSON.

Usage::

    python benchmarks/bench_scribbles.py                          # everything, 120 s budget
    python benchmarks/bench_scribbles.py --dataset em --methods imagenet --set learning_rate=1e-3
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
from _scribble_data import (
    AERIAL_NAMES,
    BUILDING_NAMES,
    DATA,
    EM_NAMES,
    NUCLEI_NAMES,
    USIIGACI_NAMES,
    aerial,
    dsb,
    em,
    hotosm,
    one_per_size_group,
    split_ids,
    usiigaci,
)

from napari_semseg.core.metrics import confusion_matrix, scores
from napari_semseg.core.scribbles import make_scribbles

RESULTS = Path(__file__).resolve().parent / "results"
HOTOSM_TRAIN = ["fair_a1_1277176_1083846", "fair_a1_1277172_1083842", "fair_a1_1277170_1083844",
                "fair_a2_1238426_1046546", "fair_a2_1238454_1046530", "fair_a2_1238452_1046534"]

DATASETS = {
    "em": {
        "title": "ISBI 2012 EM",
        "names": EM_NAMES,
        "train": [("em", i) for i in (0, 4, 8, 12, 16)],
        "test": [("em", i) for i in range(20, 30)],
        "scribbles": {"fraction": 0.015, "radius": 1, "length": (30, 90)},
    },
    "aerial": {
        "title": "Dubai aerial",
        "names": AERIAL_NAMES,
        "train": [("aerial", (t, 3)) for t in range(1, 8)],
        "test": [("aerial", (8, p)) for p in range(1, 10)],
        "scribbles": {"fraction": 0.015, "radius": 3, "length": (40, 150)},
    },
    "usiigaci": {
        "title": "Usiigaci phase contrast (unseen)",
        "names": USIIGACI_NAMES,
        "train": [("usiigaci", f"usiigaci_set{i:02d}") for i in (1, 10, 20, 30)],
        "test": "usiigaci_phase_contrast",
        "scribbles": {"fraction": 0.015, "radius": 2, "length": (30, 120)},
    },
    "hotosm": {
        "title": "HOT fAIr buildings (unseen)",
        "names": BUILDING_NAMES,
        "train": [("hotosm", name) for name in HOTOSM_TRAIN],
        "test": "hotosm_fair_buildings",
        "scribbles": {"fraction": 0.015, "radius": 2, "length": (30, 120)},
    },
    "dsb": {  # never seen by the ImageNet start (the default); the generalist was trained on it
        "title": "DSB 2018 fluorescent nuclei (unseen by the default start)",
        "names": NUCLEI_NAMES,
        "train": [("dsb", name) for name in one_per_size_group("dsb2018_fluo_nuclei", "train")],
        "test": [("dsb", name) for name in one_per_size_group("dsb2018_fluo_nuclei", "test")],
        "scribbles": {"fraction": 0.015, "radius": 1, "length": (8, 40)},
    },
}
LOADERS = {"em": em, "aerial": lambda key: aerial(*key), "usiigaci": usiigaci, "hotosm": hotosm,
           "dsb": dsb}
FOLDER_KIND = {"usiigaci_phase_contrast": "usiigaci", "hotosm_fair_buildings": "hotosm"}

# the CNN methods train the CNN alone (no first answer competes with it); answer10 is the
# library's default run, first answer included
OLD_DEFAULT = {"encoder": "resnet18", "encoder_weights": None, "encoder_depth": 4,
               "decoder_channels": "64,32,16,16", "first_answer": False}
CNN_METHODS = {
    "random": OLD_DEFAULT,
    "imagenet": {"encoder": "mobilenet_v2", "encoder_weights": "mobilenet_v2-imagenet",
                 "first_answer": False},
    "generalist": {"encoder": "mobilenet_v2", "encoder_weights": "mobilenet_v2-generalist",
                   "first_answer": False},
    "answer10": {},
    "default": {},  # what train(..., time_budget=budget) gives: first answer, then the CNN
}
METHODS = ("rf", *CNN_METHODS)


def load(item: tuple[str, object]) -> tuple[np.ndarray, np.ndarray]:
    kind, key = item
    return LOADERS[kind](key)


def test_items(ds: dict) -> list[tuple[str, object]]:
    if isinstance(ds["test"], str):
        return [(FOLDER_KIND[ds["test"]], name) for name in split_ids(ds["test"], "test")]
    return list(ds["test"])


def scribbles_for(ds: dict, train: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    return [make_scribbles(lab, seed=1000 + i, **ds["scribbles"]) for i, (_, lab) in enumerate(train)]


def score(preds: list[np.ndarray], test: list[tuple[np.ndarray, np.ndarray]], names: list[str]) -> dict:
    k = len(names)
    cm = sum(confusion_matrix(p, lab, k) for p, (_, lab) in zip(preds, test, strict=False))
    s = scores(cm, names)
    return {"mean_iou": s["mean_iou"], "accuracy": s["accuracy"],
            "iou": {n: s[f"iou/{n}"] for n in names}}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_cnn(train, labels, test, names, budget, overrides, device):
    from napari_semseg import segment
    from napari_semseg import train as train_model

    first = {}
    t0 = time.perf_counter()

    def seen(event):
        if event.model is not None and "preview_s" not in first:
            first["preview_s"] = time.perf_counter() - t0

    model = train_model([img for img, _ in train], labels, time_budget=budget, device=device,
                        class_names=names, callback=seen, **overrides)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = [np.asarray(segment(img, model, device=device).labels) for img, _ in test]
    t_pred = time.perf_counter() - t0
    tr = model.metadata.training
    start = model.metadata.start or {}
    return preds, {
        "train_s": round(t_train, 1), "predict_s": round(t_pred, 1),
        "first_preview_s": round(first["preview_s"], 1) if first else None,
        "steps": tr.get("steps"), "epochs": tr.get("epochs"), "best_epoch": tr.get("best_epoch"),
        "patches_per_s": tr.get("patches_per_s"),
        "validation_mean_iou": (tr.get("best_metrics") or {}).get("mean_iou"),
        "model": f"{model.metadata.arch}/{model.metadata.encoder} {model.metadata.arch_kwargs}",
        "start": start.get("name"), "returned": tr.get("returned", model.metadata.arch),
        "first_answer": tr.get("first_answer"),
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }


def aggregate(runs: list[dict]) -> dict:
    """Mean scores over the seeds (``runs`` keeps each seed's mean IoU), steps, patches/s and
    times averaged, and each seed's record."""
    out = {"mean_iou": float(np.mean([r["mean_iou"] for r in runs])),
           "accuracy": float(np.mean([r["accuracy"] for r in runs])),
           "iou": {k: float(np.mean([r["iou"][k] for r in runs])) for k in runs[0]["iou"]},
           "runs": [r["mean_iou"] for r in runs]}
    for key in ("steps", "patches_per_s", "train_s", "first_preview_s", "predict_s"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = round(float(np.mean(values)), 1)
    for key in ("model", "start", "features", "trees"):
        if key in runs[0]:
            out[key] = runs[0][key]
    out["per_seed"] = [{k: v for k, v in r.items() if k != "iou"} for r in runs]
    return out


def rf_features(img: np.ndarray) -> np.ndarray:
    from skimage.feature import multiscale_basic_features

    return multiscale_basic_features(img.astype(np.float32) / 255.0,
                                     channel_axis=-1 if img.ndim == 3 else None,
                                     sigma_min=0.5, sigma_max=16)


def run_rf(train, labels, test, seed=0):
    from sklearn.ensemble import RandomForestClassifier

    t0 = time.perf_counter()
    xs, ys = [], []
    for (img, _), lab in zip(train, labels, strict=False):
        f = rf_features(img)
        xs.append(f[lab > 0])
        ys.append(lab[lab > 0])
    rf = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=seed)
    rf.fit(np.concatenate(xs), np.concatenate(ys))
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = []
    for img, lab in test:
        f = rf_features(img)
        flat = f.reshape(-1, f.shape[-1])
        out = np.concatenate([rf.predict(flat[i:i + 2**20]) for i in range(0, len(flat), 2**20)])
        preds.append(out.reshape(lab.shape))
    return preds, {"train_s": round(t_train, 1), "predict_s": round(time.perf_counter() - t0, 1),
                   "features": int(xs[0].shape[1]), "trees": 100}


LABELS = {"rf": "random forest (multiscale filters)", "random": "Unet-resnet18, random init "
          "(old default)", "imagenet": "Unet-MobileNetV2, ImageNet start",
          "generalist": "Unet-MobileNetV2, generalist start", "answer10": "10-second answer "
          "(library defaults, time_budget=10)", "default": "library defaults, full budget "
          "(first answer, then the CNN; the better-validating is returned)",
          "default_nosettle": "library defaults, before the settle rule (an early CNN epoch "
          "could displace the first answer)"}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:g}"


def _spread(v: dict) -> str:
    runs = v.get("runs", [])
    return f" ({min(runs):.3f}-{max(runs):.3f})" if len(runs) > 1 else ""


def _loads(v: dict) -> str:
    loads = [r.get("load_before", [None])[0] for r in v.get("per_seed", [])]
    return "/".join(f"{x:.1f}" for x in loads if x is not None) or "-"


def _returned(methods: dict) -> list[str]:
    """What the library-default runs returned, with the validation scores that decided it."""
    out = []
    for meth in ("answer10", "default_nosettle", "default"):
        for r in methods.get(meth, {}).get("per_seed", []):
            fa = r.get("first_answer") or {}
            cands = ", ".join(f"{k} {v['mean_iou']:.3f}" for k, v in
                              (fa.get("candidates") or {}).items() if v.get("mean_iou") is not None)
            quick = fa.get("mean_iou")
            refit = fa.get("refit") or {}
            what = r.get("returned")
            if what == "first answer" and refit.get("swapped_in"):
                what = f"first answer, {refit['of']} head refitted on all strokes"
            out.append(f"- {meth}, seed {r['seed']}: returned the {what} "
                       f"({r.get('model', '').split(' ')[0]}); validation: quick first answer "
                       f"{'-' if quick is None else f'{quick:.3f}'}"
                       + (f", stronger feature heads {cands}" if cands else "")
                       + f", best {r.get('validation_mean_iou') or 0:.3f}")
    return ["", *out] if out else []


def markdown(results: dict) -> str:
    lines = ["# Scribble benchmark", "",
             f"{results['machine']}; CNN budget {results['budget_s']} s on {results['device']}; "
             f"mean over seeds {results.get('seeds', [0])} (min-max in brackets). "
             "The machine was shared with other jobs: the 1-minute load average "
             f"(`os.getloadavg()`, {results.get('cpus', '?')} CPUs) was "
             f"{results.get('load_start', '?')} at the start and {results.get('load_end', '?')} "
             "at the end (the highest of the parallel runs); the column *load* gives it before "
             "each seed's run. A wall-clock budget buys fewer steps on a loaded machine, so "
             "compare methods within one data set (they ran back to back)."
             + (f" The data sets ran as {results['parallel_runs']} processes in parallel."
                if results.get("parallel_runs", 1) > 1 else "")
             + (f" {results['note']}" if results.get("note") else ""), ""]
    for _name, r in results["datasets"].items():
        m = r["methods"]
        rf = m.get("rf", {}).get("mean_iou")
        lines += [f"## {r['title']}", "",
                  f"{r['train_images']} training images, {r['scribbled_fraction'] * 100:.2f} % "
                  f"of their pixels scribbled; {r['test_images']} held-out images scored.", "",
                  "| method | mean IoU | - RF | steps | patches/s | train s | first preview s | "
                  "load |", "|---|---|---|---|---|---|---|---|"]
        for meth, v in m.items():
            diff = f"{v['mean_iou'] - rf:+.3f}" if rf is not None and meth != "rf" else "-"
            lines.append(f"| {LABELS.get(meth, meth)} | {v['mean_iou']:.3f}{_spread(v)} | {diff} "
                         f"| {_fmt(v.get('steps'))} | {_fmt(v.get('patches_per_s'))} | "
                         f"{_fmt(v.get('train_s'))} | {_fmt(v.get('first_preview_s'))} | "
                         f"{_loads(v)} |")
        lines += _returned(m)
        lines += ["", "Per-class IoU: " + "; ".join(
            f"{meth}: " + ", ".join(f"{k} {x:.3f}" for k, x in v["iou"].items())
            for meth, v in m.items()), ""]
    return "\n".join(lines) + "\n"


def run_method(meth: str, data: dict, seed: int, args, overrides: dict) -> dict:
    """One method on one data set for one seed: its scores and record."""
    train, labels, test, names = data["train"], data["labels"], data["test"], data["names"]
    load_before = load_average()
    if meth == "rf":
        preds, info = run_rf(train, labels, test, seed=seed)
    else:
        budget = 10.0 if meth == "answer10" else args.budget
        options = {**CNN_METHODS[meth], "seed": seed, **overrides}
        preds, info = run_cnn(train, labels, test, names, budget, options, args.device)
    res = score(preds, test, names)
    res.update(info, seed=seed, load_before=load_before, load_after=load_average())
    return res


def prepare(name: str, test_limit: int | None) -> dict:
    ds = DATASETS[name]
    train = [load(i) for i in ds["train"]]
    test = [load(i) for i in test_items(ds)[:test_limit]]
    labels = scribbles_for(ds, train)
    return {"train": train, "test": test, "labels": labels, "names": ds["names"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="em,aerial,usiigaci,hotosm,dsb",
                    help="comma-separated: " + ", ".join(DATASETS))
    ap.add_argument("--methods", default=",".join(METHODS), help=", ".join(METHODS))
    ap.add_argument("--budget", type=float, default=120.0)
    ap.add_argument("--seeds", default="0,1", help="training seeds; scores are their mean")
    ap.add_argument("--rf-seeds", default="0",
                    help="seeds of the random forest (its spread over seeds is ~0.001)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--test-limit", type=int, default=6, help="score at most N test images")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="TrainSettings override for the CNN methods, e.g. learning_rate=1e-3")
    ap.add_argument("--output", default=str(RESULTS / "scribbles"), help="path without suffix")
    ap.add_argument("--merge", action="store_true", help="add to the existing JSON at --output")
    ap.add_argument("--combine", nargs="+", metavar="JSON",
                    help="only combine the results of runs done in parallel (one data set "
                         "each) into --output")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    for what, given, known in (("method", args.methods, METHODS),
                               ("data set", args.dataset, DATASETS)):
        unknown = sorted(set(given.split(",")) - set(known))
        if unknown:
            ap.error(f"unknown {what}(s) {', '.join(unknown)}; use {', '.join(known)}")
    return args


def overrides_of(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def write(results: dict, args) -> None:
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(markdown(results))


def combine(paths: list[str]) -> dict:
    """One result from several runs (each with its own data sets), with every run's loads."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    out = {k: v for k, v in parts[0].items() if k != "datasets"}
    out["datasets"] = {}
    for part in parts:  # methods of one data set may come from several runs
        for name, entry in part["datasets"].items():
            merged = out["datasets"].setdefault(name, {**entry, "methods": {}})
            merged["methods"].update(entry["methods"])
    out["load_start"] = max((p["load_start"] for p in parts), key=lambda x: x[0])
    out["load_end"] = max((p.get("load_end", p["load_start"]) for p in parts),
                          key=lambda x: x[0])
    out["parallel_runs"] = len(parts)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.combine:
        results = combine(args.combine)
        write(results, args)
        print(markdown(results))
        return 0
    if not DATA.exists():
        print(f"benchmark data not found at {DATA}", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    overrides = overrides_of(args.set)
    seeds = [int(x) for x in args.seeds.split(",")]
    rf_seeds = [int(x) for x in args.rf_seeds.split(",")]
    previous = Path(args.output).with_suffix(".json")
    results = json.loads(previous.read_text()) if args.merge and previous.exists() else {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} torch threads",
        "budget_s": args.budget, "device": args.device, "overrides": overrides, "seeds": seeds,
        "cpus": os.cpu_count(), "torch": torch.__version__, "load_start": load_average(),
        "datasets": {}}
    for name in args.dataset.split(","):
        data = prepare(name, args.test_limit)
        frac = sum(int((s > 0).sum()) for s in data["labels"]) / sum(s.size for s in data["labels"])
        entry = results["datasets"].setdefault(name, {"methods": {}})
        entry.update(title=DATASETS[name]["title"], train_images=len(data["train"]),
                     test_images=len(data["test"]), scribbled_fraction=frac)
        for meth in args.methods.split(","):
            runs = []
            for seed in (rf_seeds if meth == "rf" else seeds):
                t0 = time.perf_counter()
                runs.append(run_method(meth, data, seed, args, overrides))
                print(f"{name} {meth} seed {seed}: mean IoU {runs[-1]['mean_iou']:.4f} "
                      f"({time.perf_counter() - t0:.0f} s) load {load_average()} "
                      f"{json.dumps({k: v for k, v in runs[-1].items() if k != 'iou'})}",
                      flush=True)
            entry["methods"][meth] = aggregate(runs)
            results["load_end"] = load_average()
            if not args.no_write:
                write(results, args)  # after every method: an interrupted run keeps its results
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
