"""Train the bundled sample models with napari-semseg's own trainer (run by the developers).

- ``sample_data/em_model.safetensors``: ISBI 2012 EM, dense masks of slices 0-19 (the training
  split; ``em.tif`` is slice 29), classes membrane / interior.
- ``sample_data/aerial_model.safetensors``: Dubai aerial, dense masks of tiles 1-7 (tile 8 is
  held out; ``aerial.tif`` is a crop of tile 8), classes building, land, road, vegetation,
  water, unlabeled (255 = not annotated is ignored).
- ``sample_data/em_train_scribbles.tif``: seeded scribbles on ``em_train.tif`` (slice 0) for
  the training demo (``make_scribbles``, 1.5 % of the pixels, brush radius 1).

Both models start from the library's default start (Unet-MobileNetV2, depth 4, encoder from
the bundled ImageNet weights), are trained on the CPU with a wall-clock budget, saved in
float16 (a few MB), and scored on the bundled sample images, which they never saw. Usage::

    python scripts/make_sample_models.py [--budget 300] [--only em|aerial|scribbles]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()),
            ROOT.parent / "shared" / "data")
OUT = ROOT / "sample_data"

EM_CLASSES = ["membrane", "interior"]
EM_COLORS = ["#e6194b", "#4363d8"]
AERIAL_CLASSES = ["building", "land", "road", "vegetation", "water", "unlabeled"]
AERIAL_COLORS = ["#e6194b", "#d2b48c", "#808080", "#3cb44b", "#4363d8", "#f032e6"]

# Architecture and start of the sample models (the library's defaults: small, a few MB in
# float16, fast on a CPU); a CNN is wanted, so no first answer competes with it.
MODEL = dict(arch="unet", encoder="mobilenet_v2", encoder_depth=4,
             decoder_channels="64,32,16,16", encoder_weights="auto", first_answer=False)


def em_pair(i: int) -> tuple[np.ndarray, np.ndarray]:
    d = DATA / "isbi2012_em"
    img = np.asarray(Image.open(d / "images" / f"isbi_{i:02d}.png").convert("L"))
    m = np.asarray(Image.open(d / "masks" / f"isbi_{i:02d}.png").convert("L"))
    return img, np.where(m > 127, 2, 1).astype(np.uint8)


def aerial_pair(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(Image.open(path).convert("RGB"))
    m = np.asarray(Image.open(DATA / "dubai_aerial" / "masks" / (path.stem + ".png")))
    lab = m.astype(np.int16) + 1
    lab[m == 255] = 0
    return img, lab.astype(np.uint8)


def score(model, image: str, labels: str) -> dict:
    from napari_semseg import evaluate
    from napari_semseg.sample_data import sample_path

    report = evaluate(model, tifffile.imread(sample_path(labels)),
                      tifffile.imread(sample_path(image)), device="cpu")
    return report.to_dict()


def train_and_save(name: str, pairs, classes, colors, budget: float, sample: tuple[str, str],
                   **extra) -> None:
    from napari_semseg import save_model, train

    t0 = time.perf_counter()

    def show(e):
        if e.epoch_end:
            print(f"  {name} epoch {e.epoch} step {e.step} loss {e.loss:.4f} "
                  f"val mIoU {e.metrics.get('mean_iou', float('nan')):.4f} "
                  f"{e.elapsed:.0f} s", flush=True)

    settings = {**MODEL, **extra}
    model = train([p[0] for p in pairs], [p[1] for p in pairs], class_names=classes,
                  class_colors=colors, time_budget=budget, device="cpu", seed=0, callback=show,
                  **settings)
    report = score(model, *sample)
    model.metadata.training["sample_evaluation"] = {
        "image": sample[0], "mean_iou": report["mean_iou"], "accuracy": report["accuracy"]}
    path = save_model(model, OUT / f"{name}_model.safetensors", half=True)
    print(f"{path.name}: {path.stat().st_size / 2**20:.1f} MiB, trained "
          f"{time.perf_counter() - t0:.0f} s, mean IoU on {sample[0]}: {report['mean_iou']:.4f}",
          flush=True)


def make_scribbles_sample() -> None:
    from napari_semseg.core.scribbles import make_scribbles
    from napari_semseg.sample_data import sample_path

    labels = tifffile.imread(sample_path("em_train_labels.tif"))
    scribbles = make_scribbles(labels, fraction=0.015, radius=1, seed=0)
    tifffile.imwrite(OUT / "em_train_scribbles.tif", scribbles, compression="zlib")
    print(f"em_train_scribbles.tif: {(scribbles > 0).mean() * 100:.2f} % of pixels painted")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=300.0, help="seconds of training per model")
    ap.add_argument("--only", choices=("em", "aerial", "scribbles"))
    args = ap.parse_args()
    if args.only in (None, "scribbles"):
        make_scribbles_sample()
    if args.only in (None, "em"):
        pairs = [em_pair(i) for i in range(20)]
        train_and_save("em", pairs, EM_CLASSES, EM_COLORS, args.budget,
                       ("em.tif", "em_labels.tif"))
    if args.only in (None, "aerial"):
        paths = sorted(p for t in range(1, 8)
                       for p in (DATA / "dubai_aerial" / "images").glob(f"tile{t}_part*.jpg"))
        pairs = [aerial_pair(p) for p in paths]
        train_and_save("aerial", pairs, AERIAL_CLASSES, AERIAL_COLORS, args.budget,
                       ("aerial.tif", "aerial_labels.tif"))


if __name__ == "__main__":
    main()
