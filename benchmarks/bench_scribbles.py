"""Scribble benchmark: CNN trained on seeded brush strokes vs a random forest on filter features.

For ISBI 2012 EM (2 classes; train on slices 0-19, test on 20-29) and Dubai aerial (6 classes,
255 ignored; train on tiles 1-7, test on tile 8), sparse scribbles are drawn on a few training
images with :func:`napari_semseg.core.scribbles.make_scribbles` (fixed seeds, ~1.5 % of pixels).
Then, in the same run and on the same scribbles:

- **CNN**: :func:`napari_semseg.train` with the library defaults and a wall-clock budget
  (120 s on the CPU by default), then :func:`napari_semseg.segment` on the held-out images,
  plain and with test-time augmentation (``tta=8``);
- **RF**: the ilastik/Labkit-style baseline, scikit-image ``multiscale_basic_features``
  (intensity, edges, texture; sigma 0.5-16) and a scikit-learn ``RandomForestClassifier``
  (100 trees) trained on the scribbled pixels (not time-limited);
- **CNN dense** (reference): the same CNN training on the dense masks of the same images.

Each is scored by mean IoU (and per-class IoU) against the full ground truth of the held-out
images. Results go to ``benchmarks/results/scribbles.json`` and ``.md``.

Usage::

    python benchmarks/bench_scribbles.py                      # both data sets, 120 s budget
    python benchmarks/bench_scribbles.py --dataset em --methods cnn --set patch_size=128
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _scribble_data import AERIAL_NAMES, DATA, EM_NAMES, aerial, em  # noqa: E402

from napari_semseg.core.metrics import confusion_matrix, scores  # noqa: E402
from napari_semseg.core.scribbles import make_scribbles  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

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
}


def load(item: tuple[str, object]) -> tuple[np.ndarray, np.ndarray]:
    kind, key = item
    return em(key) if kind == "em" else aerial(*key)


def scribbles_for(ds: dict, train: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    return [make_scribbles(lab, seed=1000 + i, **ds["scribbles"]) for i, (_, lab) in enumerate(train)]


def score(preds: list[np.ndarray], test: list[tuple[np.ndarray, np.ndarray]], names: list[str]) -> dict:
    k = len(names)
    cm = sum(confusion_matrix(p, lab, k) for p, (_, lab) in zip(preds, test, strict=True))
    s = scores(cm, names)
    return {"mean_iou": s["mean_iou"], "accuracy": s["accuracy"],
            "iou": {n: s[f"iou/{n}"] for n in names}}


def run_cnn(train, labels, test, names, budget, overrides, device):
    from napari_semseg import segment, train as train_model

    events = []
    t0 = time.perf_counter()
    model = train_model([img for img, _ in train], labels, time_budget=budget, device=device,
                        class_names=names, callback=lambda e: events.append(e) if e.epoch_end
                        else None, **overrides)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = [np.asarray(segment(img, model, device=device).labels) for img, _ in test]
    t_pred = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds_tta = [np.asarray(segment(img, model, device=device, tta=8).labels) for img, _ in test]
    t_tta = time.perf_counter() - t0
    tr = model.metadata.training
    return preds, preds_tta, {
        "train_s": round(t_train, 1), "predict_s": round(t_pred, 1),
        "predict_tta8_s": round(t_tta, 1),
        "steps": tr["steps"], "epochs": tr["epochs"], "best_epoch": tr["best_epoch"],
        "patches_per_s": tr["patches_per_s"],
        "patch_size": tr["settings"]["patch_size"], "batch_size": tr["settings"]["batch_size"],
        "validation_mean_iou": tr["best_metrics"].get("mean_iou"),
        "model": f"{model.metadata.arch}/{model.metadata.encoder} {model.metadata.arch_kwargs}",
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }


def _mean_scores(items: list[dict]) -> dict:
    return {"mean_iou": float(np.mean([r["mean_iou"] for r in items])),
            "accuracy": float(np.mean([r["accuracy"] for r in items])),
            "iou": {k: float(np.mean([r["iou"][k] for r in items])) for k in items[0]["iou"]},
            "runs": [r["mean_iou"] for r in items]}


def aggregate(runs: list[dict]) -> dict:
    """Mean scores over the seeds (``runs`` keeps each seed's mean IoU), plus the first run's
    timing and model details with steps and patches/s averaged."""
    out = {k: v for k, v in runs[0].items() if k != "seed"}
    out.update(_mean_scores(runs))
    out["per_seed"] = [{k: v for k, v in r.items() if k not in ("iou", "tta8")} for r in runs]
    for key in ("steps", "patches_per_s"):
        if key in runs[0]:
            out[key] = round(float(np.mean([r[key] for r in runs])), 1)
    if "tta8" in runs[0]:
        out["tta8"] = _mean_scores([r["tta8"] for r in runs])
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
    for (img, _), lab in zip(train, labels, strict=True):
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


def markdown(results: dict) -> str:
    lines = ["# Scribble benchmark", "",
             f"{results['machine']}; CNN budget {results['budget_s']} s on {results['device']}; "
             f"mean over seeds {results.get('seeds', [0])} (min-max in brackets).",
             "CNN columns: plain prediction / with test-time augmentation (`tta=8`) from the same "
             "model.", "", "| data set | scribbled pixels | RF mean IoU | CNN mean IoU | CNN - RF | "
             "CNN dense (ref.) | CNN steps | patches/s |", "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731

    def spread(v: dict) -> str:
        runs = v.get("runs", [])
        return f" ({min(runs):.3f}-{max(runs):.3f})" if len(runs) > 1 else ""

    def both(v: dict) -> str:
        if not v:
            return "-"
        tta = v.get("tta8", {})
        text = fmt(v["mean_iou"]) + spread(v)
        return text + (f" / {tta['mean_iou']:.3f}{spread(tta)}" if tta else "")

    for _name, r in results["datasets"].items():
        m = r["methods"]
        rf = m.get("rf", {}).get("mean_iou")
        cnn = m.get("cnn", {})
        diff = "-"
        if rf is not None and cnn:
            diff = f"{cnn['mean_iou'] - rf:+.3f}"
            if "tta8" in cnn:
                diff += f" / {cnn['tta8']['mean_iou'] - rf:+.3f}"
        lines.append(f"| {r['title']} | {r['scribbled_fraction'] * 100:.2f} % | "
                     f"{fmt(rf)}{spread(m.get('rf', {}))} | "
                     f"{both(cnn)} | {diff} | {both(m.get('cnn_dense', {}))} | "
                     f"{cnn.get('steps', '-')} | {cnn.get('patches_per_s', '-')} |")
    lines += ["", "Per-class IoU:", ""]
    for _name, r in results["datasets"].items():
        lines.append(f"- {r['title']}:")
        for meth, v in r["methods"].items():
            for label, sc in ((meth, v), (f"{meth} + tta8", v.get("tta8"))):
                if sc:
                    per = ", ".join(f"{k} {x:.3f}" for k, x in sc["iou"].items())
                    lines.append(f"  - {label}: {per}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("em", "aerial", "both"), default="both")
    ap.add_argument("--methods", default="rf,cnn,cnn_dense")
    ap.add_argument("--budget", type=float, default=120.0)
    ap.add_argument("--seeds", default="0,1", help="training seeds; scores are their mean")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--test-limit", type=int, default=None, help="use only the first N test images")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="TrainSettings override for the CNN, e.g. patch_size=128")
    ap.add_argument("--output", default=str(RESULTS / "scribbles"), help="path without suffix")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"benchmark data not found at {DATA}", file=sys.stderr)
        return 1
    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - {"rf", "cnn", "cnn_dense"})
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; use rf, cnn, cnn_dense")
    seeds = [int(x) for x in args.seeds.split(",")]
    results = {"machine": f"{platform.processor() or platform.machine()}, "
                          f"{torch.get_num_threads()} torch threads",
               "budget_s": args.budget, "device": args.device, "overrides": overrides,
               "seeds": seeds,
               "torch": torch.__version__, "datasets": {}}
    names = ["em", "aerial"] if args.dataset == "both" else [args.dataset]
    for name in names:
        ds = DATASETS[name]
        train = [load(i) for i in ds["train"]]
        test = [load(i) for i in ds["test"][:args.test_limit]]
        labels = scribbles_for(ds, train)
        frac = sum(int((s > 0).sum()) for s in labels) / sum(s.size for s in labels)
        entry = {"title": ds["title"], "train_images": len(train), "test_images": len(test),
                 "scribbled_fraction": frac, "methods": {}}
        for meth in methods:
            runs = []
            for seed in seeds:
                torch.manual_seed(seed)
                t0 = time.perf_counter()
                preds_tta = None
                if meth == "rf":
                    preds, info = run_rf(train, labels, test, seed=seed)
                else:
                    targets = labels if meth == "cnn" else [lab for _, lab in train]
                    preds, preds_tta, info = run_cnn(train, targets, test, ds["names"],
                                                     args.budget, {"seed": seed, **overrides},
                                                     args.device)
                res = score(preds, test, ds["names"])
                res.update(info, seed=seed)
                if preds_tta is not None:
                    res["tta8"] = score(preds_tta, test, ds["names"])
                runs.append(res)
                print(f"{name} {meth} seed {seed}: mean IoU {res['mean_iou']:.4f}"
                      + (f", tta8 {res['tta8']['mean_iou']:.4f}" if "tta8" in res else "")
                      + f" ({time.perf_counter() - t0:.0f} s) {json.dumps(info)}", flush=True)
            entry["methods"][meth] = aggregate(runs)
        results["datasets"][name] = entry
    if not args.no_write:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(results, indent=1))
        out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
