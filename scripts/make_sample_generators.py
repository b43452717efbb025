"""Train the bundled sample generators with napari-semseg's own trainer (run by the developers).

- ``sample_data/em_generator.safetensors``: ISBI 2012 EM, slices 0-19 with their dense masks
  (the training split; ``em.tif`` / ``em_labels.tif`` are slice 29), classes membrane /
  interior.
- ``sample_data/aerial_generator.safetensors``: Dubai aerial, tiles 1-7 (tile 8 is held out;
  ``aerial.tif`` is a crop of it), classes building, land, road, vegetation, water, unlabeled.

Both are trained on the CPU (one thread) for a number of steps (``--steps``; steps, not seconds,
so a busy machine gives the same generator; or a wall-clock ``--budget``) and saved in float16
(well under 2 MB). The bundled ones: EM 313 steps (a 900 s budget on a loaded machine), aerial
1000 steps (a 288-step aerial generator scored only 0.49 of the real images' mean IoU, the
1000-step one 1.01; ``benchmarks/results/generation.md``). Each is then run on the bundled sample label map it never saw; the sample
segmentation model's mean IoU on that generated image and on the real one is printed and stored
in the generator's training record. Usage::

    python scripts/make_sample_generators.py [--steps 1000 | --budget 900] [--only em|aerial]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "sample_data"

EM_CLASSES = ["membrane", "interior"]
EM_COLORS = ["#e6194b", "#4363d8"]
AERIAL_CLASSES = ["building", "land", "road", "vegetation", "water", "unlabeled"]
AERIAL_COLORS = ["#e6194b", "#d2b48c", "#808080", "#3cb44b", "#4363d8", "#f032e6"]


def find_data() -> Path:
    """``shared/data`` next to the checkout (or next to one of its parent folders)."""
    for parent in ROOT.parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    raise SystemExit("shared/data not found next to the checkout")


def em_pairs(data: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    from PIL import Image

    out = []
    for i in range(20):
        img = np.asarray(Image.open(data / "isbi2012_em" / "images" / f"isbi_{i:02d}.png")
                         .convert("L"))
        m = np.asarray(Image.open(data / "isbi2012_em" / "masks" / f"isbi_{i:02d}.png")
                       .convert("L"))
        out.append((img, np.where(m > 127, 2, 1).astype(np.uint8)))
    return out


def aerial_pairs(data: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    from PIL import Image

    out = []
    for t in range(1, 8):
        for path in sorted((data / "dubai_aerial" / "images").glob(f"tile{t}_part*.jpg")):
            img = np.asarray(Image.open(path).convert("RGB"))
            m = np.asarray(Image.open(data / "dubai_aerial" / "masks" / (path.stem + ".png")))
            lab = m.astype(np.int16) + 1
            lab[m == 255] = 0
            out.append((img, lab.astype(np.uint8)))
    return out


def sample_check(generator, name: str) -> dict:
    """Synthesize the bundled sample label map; the sample segmenter's mean IoU on the
    generated and on the real image."""
    from napari_semseg import evaluate, synthesize
    from napari_semseg.sample_data import sample_path

    labels = tifffile.imread(sample_path(f"{name}_labels.tif"))
    real = tifffile.imread(sample_path(f"{name}.tif"))
    fake = synthesize(labels, generator, seed=0, device="cpu").image
    model = sample_path(f"{name}_model.safetensors")
    on_fake = evaluate(model, labels, fake, device="cpu").to_dict()["mean_iou"]
    on_real = evaluate(model, labels, real, device="cpu").to_dict()["mean_iou"]
    return {"labels": f"{name}_labels.tif", "mean_iou_generated": round(on_fake, 4),
            "mean_iou_real": round(on_real, 4), "ratio": round(on_fake / on_real, 4)}


def train_and_save(name: str, pairs, classes, colors, budget: float | None,
                   steps: int | None) -> None:
    from napari_semseg import save_generator, train_generator

    t0 = time.perf_counter()

    def show(e):
        if e.epoch_end:
            print(f"  {name} epoch {e.epoch} step {e.step} loss G {e.loss:.4f} "
                  f"{e.elapsed:.0f} s", flush=True)

    torch.set_num_threads(1)
    generator = train_generator([p[0] for p in pairs], [p[1] for p in pairs],
                                class_names=classes, class_colors=colors, time_budget=budget,
                                **({"steps": steps, "steps_per_epoch": 25} if steps else {}),
                                device="cpu", seed=0, threads=1, callback=show)
    check = sample_check(generator, name)
    generator.metadata.training["sample_evaluation"] = check
    path = save_generator(generator, OUT / f"{name}_generator.safetensors", half=True)
    print(f"{path.name}: {path.stat().st_size / 2**20:.2f} MiB, "
          f"{generator.metadata.training['steps']} steps in {time.perf_counter() - t0:.0f} s; "
          f"sample segmenter mean IoU on generated {check['mean_iou_generated']:.3f} vs real "
          f"{check['mean_iou_real']:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000, help="optimizer steps of each generator")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds of training each instead of --steps")
    ap.add_argument("--only", choices=("em", "aerial"))
    args = ap.parse_args()
    data = find_data()
    steps = None if args.budget else args.steps
    if args.only in (None, "em"):
        train_and_save("em", em_pairs(data), EM_CLASSES, EM_COLORS, args.budget, steps)
    if args.only in (None, "aerial"):
        train_and_save("aerial", aerial_pairs(data), AERIAL_CLASSES, AERIAL_COLORS, args.budget,
                       steps)


if __name__ == "__main__":
    main()
