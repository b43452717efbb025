"""Active annotation: where should the next strokes go? A simulated annotator, three strategies.

On ISBI 2012 EM, Dubai aerial and HOT fAIr buildings (data of ``bench_scribbles.py``), a few training images start
with sparse seeded strokes (``make_scribbles``, ``--start-fraction`` of the pixels). A model is
trained on them; then, for ``--rounds`` rounds, the annotator adds ``--strokes`` strokes per
image (each a brush stroke of ``--length`` steps following the ground-truth region of the class
under its first point, as ``make_scribbles`` draws them) at places chosen

- ``random``: uniformly among unpainted pixels with a ground-truth class;
- ``margin``: by :func:`napari_semseg.core.next_region.next_regions` on the model's margin
  uncertainty ``1 - (p1 - p2)`` of the training image (most uncertain unpainted boxes, with
  spatial diversity), the stroke starting at the most uncertain pixel of the box: what the
  Train widget's "Next region to paint" button offers;
- ``oracle`` (upper bound): the same, on the map of the model's errors against the truth;

and the model is fitted again: by default (``--model head``) the first answer's feature head
(frozen pretrained features, a light head), refitted on all strokes so far each round, so a
round's score depends on the strokes alone; with ``--model cnn`` the U-Net is trained further
(warm start, ``--steps`` optimizer steps per round, the same for every strategy; its short
one-cycle restarts cost more than the new strokes give, which swamps the choice of strokes). After each round: mean IoU on held-out images, painted pixels, strokes,
and the AUROC of the margin uncertainty as a detector of wrong pixels on the held-out images.

Results: ``benchmarks/results/active.json`` and ``.md``.

Usage::

    python benchmarks/bench_active.py --datasets em,aerial,hotosm --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_adversarial import use_data_folder
from bench_scribbles import DATASETS, load, score, test_items
from common import previous_sets

from napari_semseg.core.next_region import next_regions
from napari_semseg.core.scribbles import _paint, _walk, make_scribbles

RESULTS = Path(__file__).resolve().parent / "results"
STRATEGIES = ("random", "margin", "oracle")


def add_stroke(strokes: np.ndarray, truth: np.ndarray, start: tuple[int, int], length: int,
               radius: int, rng: np.random.Generator) -> int:
    """Paint one stroke of the class under ``start`` following its region; new pixels."""
    k = int(truth[start])
    if k == 0:
        return 0
    points = _walk(truth == k, start, length, rng)
    brush, (rows, cols) = _paint(points, radius, truth.shape)
    inside = brush & (truth[rows, cols] == k) & (strokes[rows, cols] == 0)
    strokes[rows, cols][inside] = k
    return int(inside.sum())


def random_starts(strokes, truth, n, rng):
    candidates = np.flatnonzero((strokes == 0) & (truth > 0))
    picks = rng.choice(candidates, size=min(n, candidates.size), replace=False)
    return [tuple(int(v) for v in np.unravel_index(p, truth.shape)) for p in picks]


def guided_starts(score_map, strokes, truth, n, size):
    """Start points in the best unpainted boxes of ``score_map`` (float, 0..1)."""
    starts = []
    for region in next_regions(score_map, strokes, size=size, count=n):
        y0, x0, y1, x1 = region.box
        box = np.where(truth[y0:y1, x0:x1] > 0, score_map[y0:y1, x0:x1], -1.0)
        iy, ix = np.unravel_index(int(np.argmax(box)), box.shape)
        starts.append((y0 + int(iy), x0 + int(ix)))
    return starts


def predict(model, image, uncertainty=False):
    from napari_semseg import segment

    res = segment(image, model, device="cpu", probabilities=False,
                  uncertainty="margin" if uncertainty else "none")
    return np.asarray(res.labels), (None if res.uncertainty is None
                                   else np.asarray(res.uncertainty) / 255.0)


def auroc(models_out, test) -> float:
    from sklearn.metrics import roc_auc_score

    scores, wrong = [], []
    rng = np.random.default_rng(0)
    for (labels, unc), (_, truth) in zip(models_out, test, strict=False):
        valid = np.flatnonzero(truth.ravel() > 0)
        take = rng.choice(valid, size=min(valid.size, 50_000), replace=False)
        scores.append(unc.ravel()[take])
        wrong.append(labels.ravel()[take] != truth.ravel()[take])
    s, w = np.concatenate(scores), np.concatenate(wrong)
    return float(roc_auc_score(w, s)) if 0 < w.sum() < w.size else float("nan")


def evaluate(model, test, names):
    outs = [predict(model, img, uncertainty=True) for img, _ in test]
    res = score([o[0] for o in outs], test, names)
    return {"mean_iou": res["mean_iou"], "auroc": auroc(outs, test)}


@functools.cache
def imagenet_weights():
    """The bundled MobileNetV2 ImageNet weights, read once per run (every round refits)."""
    from napari_semseg.core.training.callbacks.first_answer import encoder_state

    return encoder_state(None)


def fit(images, strokes, names, options, seed, model=None):
    """Train on the strokes so far: the CNN (warm start from ``model``) or, with
    ``options["model"] == "head"``, the first answer's feature head refitted on all strokes."""
    options = dict(options)
    if options.pop("model", "cnn") == "head":
        from napari_semseg.core.first_answer.api import fit_feature_head

        return fit_feature_head(images, strokes, encoder_state=imagenet_weights(),
                                class_names=names, seed=seed)
    from napari_semseg import train

    return train(images, strokes, model=model, device="cpu", class_names=names, seed=seed,
                 validation=0.0, **options)


def choose(strategy, model, image, truth, strokes, n, size, rng):
    if strategy == "random":
        return random_starts(strokes, truth, n, rng)
    labels, unc = predict(model, image, uncertainty=True)
    if strategy == "oracle":
        unc = ((labels != truth) & (truth > 0)).astype(np.float32)
    return guided_starts(unc.astype(np.float32), strokes, truth, n, size)


def run_strategy(strategy, start_model, train, start_strokes, test, names, args, options,
                 seed, radius):
    rng = np.random.default_rng([seed, STRATEGIES.index(strategy)])
    strokes = [s.copy() for s in start_strokes]
    model, history = start_model, []
    for rnd in range(1, args.rounds + 1):
        added = 0
        for (img, truth), st in zip(train, strokes, strict=False):
            for start in choose(strategy, model, img, truth, st, args.strokes, args.box, rng):
                added += add_stroke(st, truth, start, args.length, radius, rng)
        round_options = dict(options)
        if args.round_lr is not None:  # warm-start rounds at a lower peak learning rate
            round_options["learning_rate"] = args.round_lr
        model = fit([img for img, _ in train], strokes, names, round_options, seed, model=model)
        entry = evaluate(model, test, names)
        entry.update(round=rnd, strokes_added=args.strokes * len(train) * rnd,
                     painted=int(sum((s > 0).sum() for s in strokes)), new_pixels=added)
        history.append(entry)
        print(f"  {strategy} round {rnd}: {json.dumps(entry)}", flush=True)
    return history


def run_dataset(name, args, seed):
    ds = DATASETS[name]
    train = [load(i) for i in ds["train"][:args.train_images]]
    test = [load(i) for i in test_items(ds)[:args.test_limit]]
    names = ds["names"]
    cfg = dict(ds["scribbles"], fraction=args.start_fraction)
    start = [make_scribbles(lab, seed=1000 + i, **cfg) for i, (_, lab) in enumerate(train)]
    options = {"epochs": 1, "steps_per_epoch": args.steps, "patch_size": args.patch_size,
               "batch_size": 4, "encoder": "mobilenet_v2", "model": args.model}
    first = {**options, "steps_per_epoch": args.first_steps}
    torch.manual_seed(seed)
    model = fit([img for img, _ in train], start, names, first, seed)
    out = {"start": evaluate(model, test, names),
           "start_painted": int(sum((s > 0).sum() for s in start))}
    print(f"{name} seed {seed} start: {out['start']}", flush=True)
    dense_steps = args.first_steps + args.rounds * args.steps  # the strokes' total steps
    dense = fit([img for img, _ in train], [lab for _, lab in train], names,
                {**options, "steps_per_epoch": dense_steps}, seed)
    out["dense"] = evaluate(dense, test, names)
    print(f"{name} seed {seed} dense masks ({dense_steps} steps): {out['dense']}", flush=True)
    for strategy in STRATEGIES:
        out[strategy] = run_strategy(strategy, model, train, start, test, names, args, options,
                                     seed, ds["scribbles"]["radius"])
    return out


def markdown(results):
    lines = ["# Active annotation benchmark", "",
             f"{results['machine']}; seeds {results['seeds']}; {results['settings']}; load "
             f"average at start {results['load']}.", "",
             "| data set | round | strokes added | random | margin + diversity | "
             "error oracle | AUROC (margin vs wrong pixels) |", "|---|---|---|---|---|---|---|"]
    for name, runs in results["sets"].items():
        start = np.mean([r["start"]["mean_iou"] for r in runs])
        start_auc = np.mean([r["start"]["auroc"] for r in runs])
        lines.append(f"| {name} | 0 | 0 | {start:.3f} | {start:.3f} | {start:.3f} | "
                     f"{start_auc:.3f} |")
        for i in range(len(runs[0]["random"])):
            cells = []
            for s in STRATEGIES:
                values = [r[s][i]["mean_iou"] for r in runs]
                cells.append(f"{np.mean(values):.3f}" + (f" ({min(values):.3f}-"
                                                         f"{max(values):.3f})"
                                                         if len(values) > 1 else ""))
            auc = np.mean([r["margin"][i]["auroc"] for r in runs])
            lines.append(f"| {name} | {i + 1} | {runs[0]['random'][i]['strokes_added']} | "
                         + " | ".join(cells) + f" | {auc:.3f} |")
    lines += ["", "Mean IoU on held-out images after each round (mean, min-max over seeds); "
              "AUROC of the margin map of the margin-guided model on its held-out images.", ""]
    lines += strokes_to_dense(results)
    return "\n".join(lines) + "\n"


def strokes_to_dense(results):
    """Per data set: the dense-mask reference and the strokes each strategy needed to reach
    95 % of it (mean over seeds, first round at or above)."""
    lines = ["| data set | dense masks, same steps | 95 % of it | random | margin + diversity | "
             "error oracle |", "|---|---|---|---|---|---|"]
    for name, runs in results["sets"].items():
        if not all("dense" in r for r in runs):
            continue
        dense = float(np.mean([r["dense"]["mean_iou"] for r in runs]))
        cells = []
        for s in STRATEGIES:
            reached = [runs[0][s][i]["strokes_added"] for i in range(len(runs[0][s]))
                       if np.mean([r[s][i]["mean_iou"] for r in runs]) >= 0.95 * dense]
            last = runs[0][s][-1]["strokes_added"]
            cells.append(f"{reached[0]} strokes" if reached else f"not within {last}")
        lines.append(f"| {name} | {dense:.3f} | {0.95 * dense:.3f} | " + " | ".join(cells) + " |")
    return lines + ["", "Strokes added (beyond the seeded start) until the mean IoU over seeds "
                    "reached 95 % of a model trained on the dense masks of the same training "
                    "images for as many steps as the strokes' whole run."]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="em,aerial")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--strokes", type=int, default=4, help="strokes per image per round")
    ap.add_argument("--length", type=int, default=60)
    ap.add_argument("--box", type=int, default=48, help="next_regions box size")
    ap.add_argument("--start-fraction", type=float, default=0.004)
    ap.add_argument("--train-images", type=int, default=2)
    ap.add_argument("--test-limit", type=int, default=3)
    ap.add_argument("--first-steps", type=int, default=60)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--patch-size", type=int, default=128)
    ap.add_argument("--round-lr", type=float, default=None,
                    help="peak learning rate of the warm-start rounds (default: the library's)")
    ap.add_argument("--model", choices=("cnn", "head"), default="head",
                    help="cnn: the U-Net, warm-started each round; head: the first answer's "
                         "feature head, refitted on all strokes each round")
    ap.add_argument("--output", default=str(RESULTS / "active"))
    ap.add_argument("--merge", action="store_true",
                    help="keep the other data sets already in --output's JSON")
    args = ap.parse_args(argv)
    use_data_folder()
    torch.set_num_threads(int(os.environ.get("SEMSEG_BENCH_THREADS", "1")))
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
               "load": round(os.getloadavg()[0], 1), "seeds": seeds,
               "settings": (f"{args.train_images} training images starting with "
                            f"{args.start_fraction:.1%} scribbled, {args.strokes} strokes of "
                            f"{args.length} steps per image per round, "
                            + (f"{args.first_steps} + {args.steps} steps per round "
                               f"(mobilenet_v2 U-Net, patch {args.patch_size})"
                               if args.model == "cnn" else "no warm start")
                            + f", {args.test_limit} held-out images"
                            + (f", warm-start rounds at peak learning rate {args.round_lr}"
                               if args.round_lr is not None else "")
                            + (", model: the feature head (first answer), refitted on all "
                               "strokes each round" if args.model == "head" else "")),
               "sets": {}}
    results["sets"] = previous_sets(args.output, args.merge)
    t0 = time.perf_counter()
    for name in args.datasets.split(","):
        results["sets"][DATASETS[name]["title"]] = [run_dataset(name, args, s) for s in seeds]
        results["seconds"] = round(time.perf_counter() - t0)
        out = Path(args.output)
        out.with_suffix(".json").write_text(json.dumps(results, indent=1))
        out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
