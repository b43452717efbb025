"""Generation benchmark: label maps -> images, measured on held-out label maps.

For ISBI 2012 EM (train slices 0-19, held-out 20-29) and Dubai aerial (train tiles 1-7,
held-out tile 8), in one run:

- **generators**: :func:`napari_semseg.train_generator` on the training split with the library
  defaults (CPU, one thread), 2 seeds: seed 0 is the bundled sample generator
  (``scripts/make_sample_generators.py``, a 900 s budget), seed 1 is trained here for as many
  steps (steps, not seconds: the machine is shared and its load varies);
- **segmentation-score ratio**: an independently trained segmenter -- the bundled sample model
  of the data set (trained by ``scripts/make_sample_models.py`` on the same training split,
  used in no generator loss) -- scores mean IoU on the generated images of the held-out maps
  and on the real images of the same maps (one confusion matrix over all held-out maps);
  ratio = generated / real (target >= 0.8);
- **KID** (kernel inception distance, unbiased, cubic polynomial kernel) on features of that
  segmenter's encoder (global average of its two deepest stages) for 128 px crops: generated vs
  real held-out crops; real training crops vs real held-out crops as the floor; a "paint by
  number" baseline (each class filled with its training mean colour plus Gaussian noise of its
  training spread) as the ceiling (target: generated <= 25 % of the baseline);
- **synthetic data helps?** a generator trained on 3 real images only, then segmenters trained
  (same number of steps, 3 seeds) on those 3 real pairs alone and on them plus generated pairs from the
  other training label maps; mean IoU on the held-out real images;
- **memorization**: for generated 64 px crops, the most similar real training window
  (normalized cross-correlation), against the same for the real held-out crops;
- **throughput**: ``synthesize`` of a >= 64 Mpx label map read lazily from a tiled TIFF to a
  tiled TIFF, in a fresh process: Mpx/s and peak resident memory.

Trained generators are cached (``NAPARI_SEMSEG_BENCH_CACHE``); ``--retrain`` trains again.
Results: ``benchmarks/results/generation.json`` and ``.md``; figures in ``docs/images/``.

Usage::

    python benchmarks/bench_generation.py                     # everything (about 2 h on a loaded 2-core machine)
    python benchmarks/bench_generation.py --dataset em --parts quality,memorization
    python benchmarks/bench_generation.py --parts throughput
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, RESULTS, machine, md_table, peak_rss_mib, run_child  # noqa: E402

from napari_semseg import load_generator, load_model, segment, synthesize, train, train_generator  # noqa: E402
from napari_semseg.core.metrics import confusion_matrix, scores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = CACHE / "generation"
DOCS = ROOT / "docs" / "images"
PARTS = ("quality", "memorization", "helps", "throughput")
SEGMENTER = {"arch": "unet", "encoder": "mobilenet_v2", "encoder_depth": 4,
             "decoder_channels": "64,32,16,16"}


def find_data() -> Path:
    for parent in ROOT.parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    raise SystemExit("shared/data not found next to the checkout")


# ------------------------------------------------------------------------------ data sets


def em_pair(i: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    d = find_data() / "isbi2012_em"
    img = np.asarray(Image.open(d / "images" / f"isbi_{i:02d}.png").convert("L"))
    m = np.asarray(Image.open(d / "masks" / f"isbi_{i:02d}.png").convert("L"))
    return img, np.where(m > 127, 2, 1).astype(np.uint8)


def aerial_pair(tile: int, part: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    d = find_data() / "dubai_aerial"
    img = np.asarray(Image.open(d / "images" / f"tile{tile}_part{part:03d}.jpg").convert("RGB"))
    m = np.asarray(Image.open(d / "masks" / f"tile{tile}_part{part:03d}.png"))
    lab = m.astype(np.int16) + 1
    lab[m == 255] = 0
    return img, lab.astype(np.uint8)


DATASETS: dict[str, dict[str, Any]] = {
    "em": {"title": "ISBI 2012 EM", "load": em_pair, "model": "em_model.safetensors",
           "classes": ["membrane", "interior"],
           "train": list(range(20)), "test": list(range(20, 30)),
           "few": [0, 7, 14], "new_maps": [i for i in range(20) if i not in (0, 7, 14)]},
    "aerial": {"title": "Dubai aerial", "load": lambda k: aerial_pair(*k),
               "model": "aerial_model.safetensors",
               "classes": ["building", "land", "road", "vegetation", "water", "unlabeled"],
               "train": [(t, p) for t in range(1, 8) for p in range(1, 10)],
               "test": [(8, p) for p in range(1, 10)],
               "few": [(1, 3), (4, 3), (7, 3)],
               "new_maps": [(t, p) for t in (2, 3, 5, 6) for p in (3, 5)] + [(1, 5), (4, 5)]},
}


def load(ds: str, keys: list[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [DATASETS[ds]["load"](k) for k in keys]


# ------------------------------------------------------------------------------ helpers


def segmenter(ds: str) -> Any:
    from napari_semseg.sample_data import sample_path

    return load_model(sample_path(DATASETS[ds]["model"]))


def pooled_miou(model: Any, images: list[np.ndarray], maps: list[np.ndarray]) -> dict:
    """Mean IoU of ``model`` over all pairs (one confusion matrix; label 0 ignored)."""
    k = model.metadata.classes
    cm = np.zeros((k + 1, k + 1), np.int64)
    for img, lab in zip(images, maps, strict=False):
        pred = segment(img, model, device="cpu").labels
        cm += confusion_matrix(np.asarray(pred), lab, k)
    return scores(cm, model.metadata.class_names)


def paint_by_number(labels: np.ndarray, meta: Any, seed: int) -> np.ndarray:
    """Each class filled with its training mean colour plus Gaussian noise of its spread."""
    rng = np.random.default_rng(seed)
    means = np.asarray(meta.class_means, np.float64)
    stds = np.asarray(meta.class_stds, np.float64)
    idx = np.clip(labels.astype(np.int64) - 1, 0, meta.classes - 1)
    img = means[idx] + rng.normal(size=labels.shape + (meta.channels,)) * stds[idx]
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return img[..., 0] if meta.channels == 1 else img


def crops(images: list[np.ndarray], size: int, limit: int, seed: int) -> list[np.ndarray]:
    """Non-overlapping ``size`` crops on a grid, at most ``limit`` (a seeded choice)."""
    out = []
    for img in images:
        for y in range(0, img.shape[0] - size + 1, size):
            for x in range(0, img.shape[1] - size + 1, size):
                out.append(img[y:y + size, x:x + size])
    rng = np.random.default_rng(seed)
    if len(out) > limit:
        out = [out[i] for i in sorted(rng.choice(len(out), limit, replace=False))]
    return out


@torch.no_grad()
def features(model: Any, patches: list[np.ndarray]) -> np.ndarray:
    """Global averages of the two deepest encoder stages of the segmenter, per crop."""
    norm = model.metadata.normalization
    out = []
    for b in range(0, len(patches), 16):
        x = np.stack([p if p.ndim == 3 else p[..., None] for p in patches[b:b + 16]])
        x = torch.from_numpy(norm.apply(np.moveaxis(x, -1, 1)))
        feats = model.net.encoder(x)
        out.append(torch.cat([f.mean(dim=(2, 3)) for f in feats[-2:]], 1).numpy())
    return np.concatenate(out).astype(np.float64)


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 50, size: int = 100,
        seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance (unbiased MMD², kernel ``(x.y / d + 1) ** 3``): mean and
    standard deviation over random subsets."""
    rng = np.random.default_rng(seed)
    d = a.shape[1]
    m = min(size, len(a), len(b))
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        off = m * (m - 1)
        values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off
                      - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


# ------------------------------------------------------------------------------ parts


def sample_generator(ds: str) -> Path:
    """The bundled sample generator of this checkout (``sample_data/``)."""
    return ROOT / "sample_data" / f"{ds}_generator.safetensors"


def trained_generator(ds: str, keys: list[Any], seed: int, steps: int, tag: str,
                      retrain: bool) -> tuple[Any, dict]:
    """Train (or reuse from the cache) a generator on the pairs ``keys`` for ``steps`` steps.

    Seed 0 on the training split is the bundled sample generator (trained the same way by
    ``scripts/make_sample_generators.py``, seed 0; its own step count), unless ``retrain``.
    """
    if tag == "train" and seed == 0 and not retrain:
        gen = load_generator(sample_generator(ds))
        return gen, gen.metadata.training
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"{ds}_{tag}_seed{seed}_{steps}steps.safetensors"
    if path.exists() and not retrain:
        gen = load_generator(path)
        return gen, gen.metadata.training
    pairs = load(ds, keys)
    started = time.perf_counter()
    gen = train_generator([p[0] for p in pairs], [p[1] for p in pairs], steps=steps,
                          steps_per_epoch=25, seed=seed, device="cpu", threads=1,
                          class_names=DATASETS[ds]["classes"], output=path)
    print(f"  {ds} {tag} seed {seed}: {gen.metadata.training['steps']} steps in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return gen, gen.metadata.training


def quality(ds: str, seeds: list[int], steps: int | None, retrain: bool) -> dict:
    """Segmentation-score ratio and KID for generators of ``seeds`` (and the baseline)."""
    spec = DATASETS[ds]
    test = load(ds, spec["test"])
    maps = [t[1] for t in test]
    seg = segmenter(ds)
    real = pooled_miou(seg, [t[0] for t in test], maps)
    # features standardized with the statistics of real training crops (a fixed linear map)
    f_train = features(seg, crops([p[0] for p in load(ds, spec["train"])], 128, 400, 1))
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6

    def feats(images: list[np.ndarray]) -> np.ndarray:
        return (features(seg, crops(images, 128, 400, 0)) - mu) / sd

    f_real = feats([t[0] for t in test])
    out: dict[str, Any] = {"segmenter": spec["model"], "real_mean_iou": real["mean_iou"],
                           "kid_real_vs_train": kid(f_real, (f_train - mu) / sd),
                           "generators": []}
    meta = None
    for seed in seeds:
        steps = steps or int(load_generator(sample_generator(ds)).metadata.training["steps"])
        gen, record = trained_generator(ds, spec["train"], seed, steps, "train", retrain)
        meta = gen.metadata
        fake = [synthesize(m, gen, seed=0, device="cpu").image for m in maps]
        if seed == seeds[0]:
            out["examples"] = fake[:1]
        miou = pooled_miou(seg, fake, maps)
        if seed == seeds[0]:
            out["seams"] = seams(gen, maps[:2])
        out["generators"].append({
            "seed": seed, "steps": record.get("steps"), "train_time_s": record.get("time_s"),
            "mean_iou": miou["mean_iou"], "ratio": miou["mean_iou"] / real["mean_iou"],
            "kid": kid(f_real, feats(fake))})
    baseline = [paint_by_number(m, meta, i) for i, m in enumerate(maps)]
    base = pooled_miou(seg, baseline, maps)
    out["baseline"] = {"mean_iou": base["mean_iou"], "ratio": base["mean_iou"] / real["mean_iou"],
                       "kid": kid(f_real, feats(baseline))}
    out["examples"] = {"real": test[0][0], "labels": maps[0], "generated": out["examples"][0],
                       "baseline": baseline[0]}
    return out


def seams(gen: Any, maps: list[np.ndarray], tile: int = 256) -> dict:
    """Tiled synthesis (``tile`` px tiles, the default overlap) against one whole-map pass."""
    diffs = []
    for m in maps:
        side = max(m.shape) + 64
        whole = synthesize(m, gen, tile=side, chunk=side, overlap=0, device="cpu").image
        tiled = synthesize(m, gen, tile=tile, device="cpu").image
        diffs.append(np.abs(tiled.astype(np.float64) - whole))
    d = np.concatenate([x.ravel() for x in diffs])
    return {"tile": tile, "overlap": gen.metadata.overlap, "max_abs": float(d.max()),
            "mean_abs": float(d.mean()), "share_differing": float((d > 0).mean())}


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows minus their mean, scaled to unit length (for normalized cross-correlation)."""
    x = rows.astype(np.float32)
    x -= x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def most_similar(queries: np.ndarray, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and normalized cross-correlation of each query's most similar pool row."""
    q = torch.from_numpy(unit_rows(queries))
    best = torch.full((len(q),), -2.0)
    best_i = torch.zeros(len(q), dtype=torch.long)
    for start in range(0, len(pool), 4096):
        block = torch.from_numpy(unit_rows(pool[start:start + 4096]))
        sim, i = (q @ block.T).max(dim=1)
        better = sim > best
        best[better], best_i[better] = sim[better], i[better] + start
    return best_i.numpy(), best.numpy()


def training_windows(images: list[np.ndarray], size: int, limit: int
                     ) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """All ``size`` windows of the training images on the densest grid with <= ``limit``."""
    area = sum((i.shape[0] - size) * (i.shape[1] - size) for i in images)
    step = max(4, int(np.ceil(np.sqrt(area / limit))))
    rows, where = [], []
    for k, img in enumerate(images):
        for y in range(0, img.shape[0] - size + 1, step):
            for x in range(0, img.shape[1] - size + 1, step):
                rows.append(img[y:y + size, x:x + size].astype(np.float16).ravel())
                where.append((k, y, x))
    return np.stack(rows), where


def memorization(ds: str, n: int = 8, size: int = 64) -> dict:
    """Most similar training window (normalized cross-correlation) of generated crops, and of
    the real held-out crops at the same places (copying would show as a correlation near 1,
    far above the real crops')."""
    spec = DATASETS[ds]
    gen = load_generator(sample_generator(ds))
    train_images = [p[0] for p in load(ds, spec["train"])]
    pool, where = training_windows(train_images, size, 30000)
    test = load(ds, spec["test"])
    rng = np.random.default_rng(0)
    gen_q, real_q, shown = [], [], []
    for k in range(n):
        img, lab = test[k % len(test)]
        y = int(rng.integers(0, img.shape[0] - size))
        x = int(rng.integers(0, img.shape[1] - size))
        fake = synthesize(lab[y:y + size, x:x + size], gen, seed=k, device="cpu").image
        gen_q.append(fake.astype(np.float16).ravel())
        real_q.append(img[y:y + size, x:x + size].astype(np.float16).ravel())
        shown.append(fake)
    gi, gsim = most_similar(np.stack(gen_q), pool)
    _, rsim = most_similar(np.stack(real_q), pool)
    figure = []
    for j in range(n):
        k, y, x = where[gi[j]]
        figure.append((shown[j], train_images[k][y:y + size, x:x + size]))
    return {"crops": n, "crop_size": size, "candidates": len(pool),
            "generated_best_ncc": gsim.round(4).tolist(), "real_best_ncc": rsim.round(4).tolist(),
            "generated_median_ncc": float(np.median(gsim)),
            "real_median_ncc": float(np.median(rsim)), "figure": figure}


def train_segmenter(images: list[np.ndarray], maps: list[np.ndarray], seed: int,
                    steps: int) -> Any:
    return train(images, maps, epochs=max(1, steps // 25), steps_per_epoch=25, seed=seed,
                 device="cpu", threads=1, validation=0.0, **SEGMENTER)


def helps(ds: str, seeds: list[int], gen_steps: int, seg_steps: int, retrain: bool) -> dict:
    """Segmenters on 3 real pairs vs 3 real + generated pairs from new label maps."""
    spec = DATASETS[ds]
    few = load(ds, spec["few"])
    gen, record = trained_generator(ds, spec["few"], 0, gen_steps, "few", retrain)
    new_maps = [p[1] for p in load(ds, spec["new_maps"])]
    fake = [synthesize(m, gen, seed=100 + i, device="cpu").image for i, m in enumerate(new_maps)]
    test = load(ds, spec["test"])
    runs = []
    for seed in seeds:
        row = {"seed": seed}
        for name, pairs in (("real", few), ("real+generated", few + list(zip(fake, new_maps, strict=False)))):
            model = train_segmenter([p[0] for p in pairs], [p[1] for p in pairs], seed,
                                    seg_steps)
            row[name] = pooled_miou(model, [t[0] for t in test], [t[1] for t in test])["mean_iou"]
            print(f"  {ds} helps seed {seed} {name}: {row[name]:.4f}", flush=True)
        row["gain"] = row["real+generated"] - row["real"]
        runs.append(row)
    gains = [r["gain"] for r in runs]
    return {"real_images": len(few), "generated_pairs": len(fake),
            "generator_steps": record.get("steps"), "generator_time_s": record.get("time_s"),
            "segmenter_steps": seg_steps, "runs": runs, "mean_gain": float(np.mean(gains)),
            "std_gain": float(np.std(gains))}


def big_label_map(path: Path, side: int) -> Path:
    """A ``side`` x ``side`` tiled TIFF label map: the held-out EM maps, mirrored and tiled."""
    import tifffile

    if path.exists():
        return path
    maps = [p[1] for p in load("em", DATASETS["em"]["test"])]
    tile = 512

    def tiles():
        k = 0
        for _y in range(0, side, tile):
            for _x in range(0, side, tile):
                m = maps[k % len(maps)]
                yield m[::-1] if (k // len(maps)) % 2 else m
                k += 1

    tifffile.imwrite(path, tiles(), shape=(side, side), dtype=np.uint8, tile=(tile, tile),
                     compression="zlib")
    return path


def child(labels: str, generator: str, output: str) -> dict:
    """In a fresh process: synthesize a label map file to a TIFF; time and peak memory."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    result = synthesize(labels, generator, output=output, device="cpu", overwrite=True)
    seconds = time.perf_counter() - started
    mpx = int(np.prod(result.image.shape[:2])) / 1e6
    return {"mpx": mpx, "seconds": seconds, "mpx_s": mpx / seconds,
            "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads()}


def throughput(side: int) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    labels = big_label_map(WORK / f"em_labels_{side}.tif", side)
    gen_path = sample_generator("em")
    out = run_child(Path(__file__), [str(labels), str(gen_path), str(WORK / "big_out.tif")],
                    env={"OMP_NUM_THREADS": "1"}, timeout=4 * 3600)
    (WORK / "big_out.tif").unlink(missing_ok=True)
    return {**out, "shape": [side, side], "input": "tiled TIFF (zlib)", "output": "tiled TIFF"}


# ------------------------------------------------------------------------------ reporting


def coloured(labels: np.ndarray, colors: list[str]) -> np.ndarray:
    table = np.zeros((len(colors) + 1, 3), np.uint8)
    for k, c in enumerate(colors, 1):
        table[k] = [int(c.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4)]
    return table[labels]


def rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img


def save_figures(ds: str, examples: dict, colors: list[str], side: int = 384) -> str:
    """Real image | label map | generated | paint by number (a crop of one held-out map)."""
    from PIL import Image

    DOCS.mkdir(parents=True, exist_ok=True)
    h, w = examples["labels"].shape
    s = min(side, h, w)
    y, x = (h - s) // 2, (w - s) // 2
    panels = [rgb(examples["real"]), coloured(examples["labels"], colors),
              rgb(examples["generated"]), rgb(examples["baseline"])]
    gap = np.full((s, 6, 3), 255, np.uint8)
    row = []
    for p in panels:
        row += [p[y:y + s, x:x + s], gap]
    name = f"generation_{ds}.png"
    Image.fromarray(np.concatenate(row[:-1], 1)).save(DOCS / name)
    return name


def save_memorization_figure(ds: str, pairs: list[tuple[np.ndarray, np.ndarray]]) -> str:
    from PIL import Image

    gap = np.full((pairs[0][0].shape[0] * 2 + 4, 4, 3), 255, np.uint8)
    cols = []
    for fake, near in pairs:
        sep = np.full((4, fake.shape[1], 3), 255, np.uint8)
        cols += [np.concatenate([rgb(fake), sep, rgb(near)], 0), gap]
    name = f"generation_nearest_{ds}.png"
    Image.fromarray(np.concatenate(cols[:-1], 1)).save(DOCS / name)
    return name


def fmt_kid(value: list[float] | tuple[float, float]) -> str:
    return f"{value[0] * 1000:.2f} ± {value[1] * 1000:.2f}"


def quality_rows(q: dict) -> list[list[Any]]:
    base_kid = q["baseline"]["kid"][0]
    rows = [["real images (held out)", q["real_mean_iou"], 1.0, "-", "-"],
            ["real training crops (KID floor)", "-", "-", fmt_kid(q["kid_real_vs_train"]),
             f"{q['kid_real_vs_train'][0] / base_kid:.3f}"]]
    for g in q["generators"]:
        rows.append([f"generator seed {g['seed']} ({g['steps']} steps)", g["mean_iou"],
                     g["ratio"], fmt_kid(g["kid"]), f"{g['kid'][0] / base_kid:.3f}"])
    rows.append(["paint by number (baseline)", q["baseline"]["mean_iou"], q["baseline"]["ratio"],
                 fmt_kid(q["baseline"]["kid"]), "1.00"])
    return rows


def render(results: dict) -> str:
    lines = ["# Generation: label maps to images", "",
             "Held-out label maps (EM slices 20-29, aerial tile 8); generators trained on the "
             "training split on the CPU (one thread, a fixed number of steps, shared machine; seed 0 "
             "is the bundled sample generator). "
             "Segmenter: the bundled sample model of each data set (trained on the same split, "
             "in no generator loss). KID x 1000 on its encoder features of 128 px crops, vs "
             "real held-out crops (features standardized with the real training crops' statistics; mean ± sd over 50 subsets of 100). Targets: ratio >= 0.8, "
             "KID <= 0.25 of the baseline's.", ""]
    for ds, r in results.get("datasets", {}).items():
        lines += [f"## {DATASETS[ds]['title']}", ""]
        if "quality" in r:
            q = r["quality"]
            sm = q.get("seams", {})
            lines += [md_table(["images", "segmenter mean IoU", "ratio to real",
                                "KID x 1000", "KID / baseline"], quality_rows(q)), "",
                      f"Seams: {sm.get('tile')} px tiles (overlap {sm.get('overlap')}) against "
                      f"a whole-map pass: max difference {sm.get('max_abs')} grey levels, mean "
                      f"{sm.get('mean_abs', float('nan')):.4f}, "
                      f"{100 * sm.get('share_differing', float('nan')):.3f} % of values differ.",
                      "",
                      f"![{ds}](docs/images/{q['figure']}) real, label map, generated, "
                      "paint by number", ""]
        if "helps" in r:
            h = r["helps"]
            rows = [[x["seed"], x["real"], x["real+generated"], f"{x['gain']:+.4f}"]
                    for x in h["runs"]]
            lines += [f"Synthetic data: {h['real_images']} real pairs vs + {h['generated_pairs']} "
                      f"generated pairs (generator trained on the same {h['real_images']} images "
                      f"for {h['generator_steps']} steps; segmenters "
                      f"{h['segmenter_steps']} steps each); mean IoU on the "
                      "held-out real images:", "",
                      md_table(["seed", "real only", "real + generated", "gain"], rows), "",
                      f"Mean gain {h['mean_gain']:+.4f} ± {h['std_gain']:.4f}.", ""]
        if "memorization" in r:
            m = r["memorization"]
            lines += [f"Memorization: for {m['crops']} generated {m['crop_size']} px crops, the "
                      f"most similar of {m['candidates']} training windows (normalized "
                      f"cross-correlation): median {m['generated_median_ncc']:.2f}, against "
                      f"{m['real_median_ncc']:.2f} for the real held-out crops at the same "
                      "places (a copy would be near 1). "
                      f"![nearest](docs/images/{m['figure']}) (top: generated, below: "
                      "most similar training window)", ""]
    if "throughput" in results:
        t = results["throughput"]
        lines += ["## Throughput", "", md_table(
            ["label map", "Mpx", "seconds", "Mpx/s", "peak RSS MiB", "threads"],
            [[f"{t['shape'][0]} x {t['shape'][1]} {t['input']}", t["mpx"], t["seconds"],
              t["mpx_s"], t["peak_rss_mib"], t["threads"]]]), ""]
    return "\n".join(lines)


def run_dataset(ds: str, parts: list[str], args: argparse.Namespace, out: dict) -> None:
    spec = DATASETS[ds]
    colors = segmenter(ds).metadata.class_colors
    if "quality" in parts:
        q = quality(ds, args.seeds, args.steps, args.retrain)
        q["figure"] = save_figures(ds, q.pop("examples"), colors)
        out["quality"] = q
    if "memorization" in parts:
        m = memorization(ds)
        m["figure"] = save_memorization_figure(ds, m.pop("figure"))
        out["memorization"] = m
    if "helps" in parts:
        out["helps"] = helps(ds, [0, 1, 2], args.few_steps, args.segmenter_steps,
                             args.retrain)
    out["title"] = spec["title"]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:5])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=("em", "aerial", "both"), default="both")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1])
    ap.add_argument("--steps", type=int, default=None,
                    help="generator steps per seed (default: as many as the sample generator)")
    ap.add_argument("--few-steps", type=int, default=200,
                    help="steps of the generator trained on 3 real images")
    ap.add_argument("--segmenter-steps", type=int, default=150,
                    help="steps per segmenter (synthetic-data experiment)")
    ap.add_argument("--side", type=int, default=8192, help="edge of the throughput label map")
    ap.add_argument("--retrain", action="store_true", help="train cached generators again")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",")]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown --parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    torch.set_num_threads(1)
    results: dict[str, Any] = {"datasets": {}, "machine": machine()}
    started = time.perf_counter()
    for ds in (("em", "aerial") if args.dataset == "both" else (args.dataset,)):
        out = results["datasets"].setdefault(ds, {})
        t0 = time.perf_counter()
        run_dataset(ds, parts, args, out)
        out["settings"] = {k: v for k, v in vars(args).items() if k != "retrain"}
        out["seconds"] = time.perf_counter() - t0
        write(results)
    if "throughput" in parts:
        results["throughput"] = throughput(args.side)
        results["throughput"]["seconds_total"] = time.perf_counter() - started
    write(results)


def write(results: dict) -> None:
    """Write the results, merged into the file's current content (runs for one data set or one
    part may run side by side)."""
    import os

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "generation.json"
    if path.exists():
        current = json.loads(path.read_text())
        for ds, parts in results.get("datasets", {}).items():
            current.setdefault("datasets", {}).setdefault(ds, {}).update(parts)
        results = {**current, **{k: v for k, v in results.items() if k != "datasets"},
                   "datasets": current.get("datasets", {})}
    results["load_average_end"] = os.getloadavg()
    (RESULTS / "generation.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    (RESULTS / "generation.md").write_text(render(results) + "\n")


if __name__ == "__main__":
    main()
