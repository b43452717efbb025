"""Train the bundled start ``mobilenet_v2-generalist``: ImageNet MobileNetV2 adapted to microscopy
and remote sensing by supervised training on several annotated data sets at once.

Model: smp Unet (encoder ``mobilenet_v2``, depth 4, decoder 64,32,16,16 as napari-semseg's
training defaults) starting from the bundled ``mobilenet_v2-imagenet`` encoder, one shared
decoder and one 3x3 segmentation head per data set (each set keeps its own classes). Only the
encoder is shipped. Batches mix the data sets; each sample's loss (cross-entropy, ignored
pixels excluded) uses its own set's head.

Data (``../shared/data``), TRAIN splits only; every image any benchmark scores stays unseen:

- ``isbi2012_em`` slices 0-19 (the benchmarks test on 20-29), 2 classes;
- ``dubai_aerial`` tiles 1-7 (the benchmarks test on tile 8), 6 classes, 255 ignored;
- ``dsb2018_fluo_nuclei``, ``dsb2018_brightfield_nuclei``, ``axondeepseg_sem``: the ``train``
  rows of their meta.csv.

Left out: ``usiigaci_phase_contrast`` and ``hotosm_fair_buildings`` (the never-seen benchmark
sets), ``drosophila_vnc_sstem`` (CC BY-NC-SA: non-commercial, may not ship in derived weights)
and ``spacenet_rio_buildings`` (CC BY-SA share-alike; also kept as a second unseen aerial set).

Inputs: per-image percentile normalization (1-99.8 % -> 0-1), grey images repeated to RGB,
then ImageNet mean/std (the statistics the start records). Augmentation (heavy): scale 0.5-2x
(log-uniform), any rotation angle, flips, gamma, contrast/brightness, per-channel colour,
grey inversion, RGB -> grey, blur and noise.

The run is bounded by ``--time-budget`` (seconds) and/or ``--steps``; the learning rate follows
a one-cycle schedule over the budget. Every ``--checkpoint-every`` seconds the whole network
(safetensors) and a JSON log are written to ``--out``, and the encoder is exported as a start
file there, so a stopped run still leaves a usable encoder. ``--install`` (or ``--export
CHECKPOINT``) writes the encoder into ``src/napari_semseg/weights`` with its provenance note and
manifest entry. Usage::

    python scripts/train_generalist.py --time-budget 60 --threads 1          # smoke test
    nohup python scripts/train_generalist.py --time-budget 4200 --threads 1 --install &
    python scripts/train_generalist.py --export out/generalist/checkpoint.safetensors
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _weights_manifest import ROOT, WEIGHTS, record_start, shared_dir  # noqa: E402

from napari_semseg.core.pretrained import (  # noqa: E402
    IMAGENET_MEAN, IMAGENET_STD, list_starts, load_start, resolve_start, write_start)

NAME = "mobilenet_v2-generalist"
ENCODER = "mobilenet_v2"
DEPTH = 4
DECODER = (64, 32, 16, 16)
IGNORE = 255
LICENCE = ("BSD-3-Clause (napari-semseg); derived from torchvision ImageNet weights "
           "(BSD-3-Clause) and the training sets listed in the note (CC0, MIT, and the ISBI 2012 "
           "and Dubai aerial sets, which state no licence: cite them)")


@dataclass
class DataSet:
    """The training images of one data set, uint8, with per-image percentiles."""

    name: str
    classes: int
    weight: float
    images: list[np.ndarray]
    masks: list[np.ndarray]
    ids: list[str]
    lows: list[np.ndarray]
    highs: list[np.ndarray]


def _meta_train_ids(folder: Path) -> list[str]:
    with open(folder / "meta.csv", newline="") as fh:
        return [row["id"] for row in csv.DictReader(fh) if row["split"] == "train"]


def _percentiles(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = img.reshape(-1, img.shape[-1]).astype(np.float32)
    step = max(1, flat.shape[0] // 200_000)
    sample = flat[::step]
    lo, hi = np.percentile(sample, 1.0, axis=0), np.percentile(sample, 99.8, axis=0)
    return lo.astype(np.float32), np.maximum(hi, lo + 1.0).astype(np.float32)


def _load(folder: Path, ids: list[str], image_ext: str, mask_map) -> tuple[list, list]:
    images, masks = [], []
    for i in ids:
        img = np.asarray(Image.open(folder / "images" / f"{i}{image_ext}"))
        img = img[..., None] if img.ndim == 2 else img[..., :3]
        masks.append(mask_map(np.asarray(Image.open(folder / "masks" / f"{i}.png"))))
        images.append(np.ascontiguousarray(img))
    return images, masks


def data_sets(data: Path) -> list[DataSet]:
    """The five training sets (train splits only), with their class maps."""
    def ident(m):
        return m.astype(np.uint8)

    specs = [
        ("isbi2012_em", 2, 1.0, [f"isbi_{i:02d}" for i in range(20)], ".png",
         lambda m: (m > 127).astype(np.uint8)),
        ("dubai_aerial", 6, 2.0, [f"tile{t}_part{p:03d}" for t in range(1, 8)
                                  for p in range(1, 10)], ".jpg", ident),
        ("dsb2018_fluo_nuclei", 2, 1.0, None, ".png", ident),
        ("dsb2018_brightfield_nuclei", 2, 1.0, None, ".png", ident),
        ("axondeepseg_sem", 3, 1.0, None, ".png", ident),
    ]
    sets = []
    for name, classes, weight, ids, ext, mask_map in specs:
        folder = data / name
        ids = ids if ids is not None else _meta_train_ids(folder)
        ids = [i for i in ids if (folder / "images" / f"{i}{ext}").exists()]
        images, masks = _load(folder, ids, ext, mask_map)
        pct = [_percentiles(im) for im in images]
        sets.append(DataSet(name, classes, weight, images, masks, ids,
                            [p[0] for p in pct], [p[1] for p in pct]))
    return sets


def _crop(img: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size`` x ``size`` window; images smaller than that are padded (mask: ignore)."""
    h, w = mask.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect" if ph < h and pw < w
                     else "edge")
        mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE)
        h, w = mask.shape
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return img[y:y + size, x:x + size], mask[y:y + size, x:x + size]


def _geometry(img: torch.Tensor, mask: torch.Tensor, patch: int, inner: float, angle: float,
              flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample the central square (``inner`` of the side) of a (C, c, c) crop, rotated by
    ``angle`` and optionally mirrored, onto ``patch`` x ``patch`` pixels (labels: nearest)."""
    cos, sin = math.cos(angle) * inner, math.sin(angle) * inner
    sx = -1.0 if flip else 1.0
    theta = torch.tensor([[cos * sx, -sin, 0.0], [sin * sx, cos, 0.0]], dtype=torch.float32)
    grid = F.affine_grid(theta[None], [1, img.shape[0], patch, patch], align_corners=False)
    out = F.grid_sample(img[None], grid, mode="bilinear", padding_mode="reflection",
                        align_corners=False)[0]
    lab = F.grid_sample(mask[None, None].float() + 1, grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)[0, 0]
    lab = torch.where(lab == 0, torch.full_like(lab, IGNORE + 1), lab) - 1
    return out, lab.long()


def _intensity(x: torch.Tensor, grey: bool, rng: np.random.Generator) -> torch.Tensor:
    """Heavy intensity augmentation of a (3, H, W) image on a 0-1 scale."""
    if grey and rng.random() < 0.2:
        x = 1.0 - x
    if not grey and rng.random() < 0.2:
        x = x.mean(0, keepdim=True).expand_as(x).clone()
    if not grey and rng.random() < 0.5:
        x = x * torch.from_numpy(rng.uniform(0.8, 1.2, (3, 1, 1)).astype(np.float32))
    x = x.clamp(0, 1) ** float(math.exp(rng.uniform(-0.7, 0.7)))
    x = (x - 0.5) * float(rng.uniform(0.6, 1.5)) + 0.5 + float(rng.uniform(-0.2, 0.2))
    if rng.random() < 0.2:
        k = torch.tensor([1.0, 2.0, 1.0]) / 4
        x = F.conv2d(F.pad(x[:, None], (1, 1, 1, 1), mode="replicate"),
                     (k[:, None] * k[None, :])[None, None])[:, 0]
    if rng.random() < 0.3:
        x = x + torch.randn_like(x) * float(rng.uniform(0.01, 0.08))
    return x


def sample(ds: DataSet, patch: int, rng: np.random.Generator, augment: bool = True
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented, normalized (3, patch, patch) input and its (patch, patch) labels."""
    areas = np.array([m.size for m in ds.masks], np.float64)
    i = int(rng.choice(len(ds.images), p=areas / areas.sum()))
    scale = float(math.exp(rng.uniform(math.log(0.5), math.log(2.0)))) if augment else 1.0
    crop = max(16, int(round(patch * scale * (1.42 if augment else 1.0))))
    img, mask = _crop(ds.images[i], ds.masks[i], crop, rng)
    x = (torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)
         - torch.from_numpy(ds.lows[i]).view(-1, 1, 1)) / torch.from_numpy(
        ds.highs[i] - ds.lows[i]).view(-1, 1, 1)
    grey = x.shape[0] == 1
    x = x.expand(3, -1, -1).contiguous() if grey else x
    lab = torch.from_numpy(mask.astype(np.int64))
    if augment:
        # the crop is sqrt(2) larger than the region kept, so any rotation stays inside it
        x, lab = _geometry(x, lab, patch, 1 / 1.42, float(rng.uniform(0, 2 * math.pi)),
                           bool(rng.random() < 0.5))
        x = _intensity(x, grey, rng)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x.clamp(-1, 2) - mean) / std).float(), lab


class MultiHead(nn.Module):
    """Unet encoder and decoder shared by all sets, one 3x3 head per set."""

    def __init__(self, sets: list[DataSet]) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        unet = smp.Unet(ENCODER, encoder_weights=None, encoder_depth=DEPTH,
                        decoder_channels=DECODER, classes=2)
        self.encoder, self.decoder = unet.encoder, unet.decoder
        self.heads = nn.ModuleDict({s.name: nn.Conv2d(DECODER[-1], s.classes, 3, padding=1)
                                    for s in sets})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def batch(sets: list[DataSet], n: int, patch: int, rng: np.random.Generator
          ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    weights = np.array([s.weight for s in sets])
    picks = rng.choice(len(sets), size=n, p=weights / weights.sum())
    pairs = [sample(sets[int(k)], patch, rng) for k in picks]
    x = torch.stack([p[0] for p in pairs])
    y = torch.stack([p[1] for p in pairs])
    return x, y, [sets[int(k)].name for k in picks]


def step_loss(model: MultiHead, x: torch.Tensor, y: torch.Tensor, names: list[str]
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean cross-entropy over samples, each through its own set's head."""
    feats = model(x)
    total, per_set = [], {}
    for name in sorted(set(names)):
        idx = [i for i, n in enumerate(names) if n == name]
        logits = model.heads[name](feats[idx])
        target = y[idx]
        if (target != IGNORE).any():
            loss = F.cross_entropy(logits, target, ignore_index=IGNORE)
            total.append(loss * len(idx))
            per_set[name] = loss.item()
    return torch.stack(total).sum() / len(names), per_set


def one_cycle(fraction: float, peak: float) -> float:
    f = min(max(fraction, 0.0), 1.0)
    if f < 0.05:
        return peak * (0.04 + 0.96 * f / 0.05)
    return peak * (0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * (f - 0.05) / 0.95)))


def export_encoder(model: MultiHead, path: Path, info: dict) -> str:
    imagenet = next(s for s in list_starts() if s.name == "mobilenet_v2-imagenet")
    origin = (f"napari-semseg scripts/train_generalist.py from {imagenet.name} "
              f"(sha256 {imagenet.sha256[:12]}...), {info['steps']} steps, "
              f"{info['seconds'] / 60:.0f} min, sets {', '.join(info['images'])}")
    return write_start(model.encoder.state_dict(), path, encoder=ENCODER, origin=origin,
                       licence=LICENCE, extra={"training": info})


def save_checkpoint(model: MultiHead, out: Path, info: dict) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = out / "checkpoint.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"info": json.dumps(info)})
    os.replace(tmp, out / "checkpoint.safetensors")
    (out / "log.json").write_text(json.dumps(info, indent=1))
    export_encoder(model, out / f"{NAME}.safetensors", info)


def load_checkpoint(model: MultiHead, path: Path) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))
    with safe_open(str(path), framework="pt") as fh:
        return json.loads(fh.metadata()["info"])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch thread(s), "
            f"no GPU, torch {torch.__version__}, {platform.system()}")


def new_model(sets: list[DataSet]) -> MultiHead:
    model = MultiHead(sets)
    start = resolve_start("mobilenet_v2-imagenet", ENCODER, DEPTH)
    load_start(model.encoder, start, ENCODER, 3, DEPTH)
    return model


def train(args: argparse.Namespace) -> tuple[MultiHead, dict]:
    """The training loop; checkpoints every ``args.checkpoint_every`` seconds."""
    sets = data_sets(args.data)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    model = new_model(sets)
    info = {"sets": {s.name: {"images": len(s.ids), "classes": s.classes, "weight": s.weight,
                              "ids": s.ids} for s in sets},
            "images": {s.name: len(s.ids) for s in sets}, "steps": 0, "seconds": 0.0,
            "batch_size": args.batch_size, "patch_size": args.patch_size,
            "learning_rate": args.learning_rate, "machine": machine(), "curve": []}
    if args.resume and (args.out / "checkpoint.safetensors").exists():
        info = load_checkpoint(model, args.out / "checkpoint.safetensors")
        info["machine"] = machine()
    head_params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    opt = torch.optim.AdamW([{"params": model.encoder.parameters(), "lr_scale": 0.5},
                             {"params": head_params, "lr_scale": 1.0}], weight_decay=1e-4)
    model.train()
    start, last_ckpt, window = time.monotonic() - info["seconds"], time.monotonic(), []
    while True:
        elapsed = time.monotonic() - start
        fraction = max(elapsed / args.time_budget if args.time_budget else 0.0,
                       info["steps"] / args.steps if args.steps else 0.0)
        if fraction >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = one_cycle(fraction, args.learning_rate) * group["lr_scale"]
        x, y, names = batch(sets, args.batch_size, args.patch_size, rng)
        loss, per_set = step_loss(model, x, y, names)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        info["steps"] += 1
        window.append((loss.item(), per_set))
        if info["steps"] % args.log_every == 0:
            info["seconds"] = time.monotonic() - start
            info["curve"].append(_summary(window, info))
            window = []
            print(json.dumps(info["curve"][-1]), flush=True)
        if time.monotonic() - last_ckpt > args.checkpoint_every:
            info["seconds"] = time.monotonic() - start
            info["load"] = _load_range(info.get("load"))
            save_checkpoint(model, args.out, info)
            last_ckpt = time.monotonic()
    info["seconds"] = time.monotonic() - start
    if window:
        info["curve"].append(_summary(window, info))
    save_checkpoint(model, args.out, info)
    return model, info


def _load_range(previous: str | None) -> str:
    """Lowest and highest 5-minute load average seen so far, as 'a-b'."""
    now = os.getloadavg()[1]
    lo, hi = (map(float, previous.split("-")) if previous else (now, now))
    return f"{min(lo, now):.1f}-{max(hi, now):.1f}"


def _summary(window: list, info: dict) -> dict:
    sets: dict[str, list[float]] = {}
    for _, per_set in window:
        for k, v in per_set.items():
            sets.setdefault(k, []).append(v)
    return {"step": info["steps"], "seconds": round(info["seconds"], 1),
            "loss": round(float(np.mean([w[0] for w in window])), 4),
            "per_set": {k: round(float(np.mean(v)), 4) for k, v in sorted(sets.items())}}


NOTE = """# {name}

MobileNetV2 encoder (smp `mobilenet_v2`) adapted to microscopy and remote sensing:
`build_model(..., encoder="mobilenet_v2", encoder_weights="{name}")`.

- Start: the bundled `mobilenet_v2-imagenet` (torchvision ImageNet-1k weights, BSD-3-Clause).
- Training: `scripts/train_generalist.py` (supervised, all sets at once): smp Unet, encoder
  depth {depth}, decoder {decoder}, one 3x3 head per data set, cross-entropy; AdamW
  (weight decay 1e-4), one-cycle learning rate, peak {lr} (encoder {lr_enc}); batch {batch}
  patches of {patch} px mixing the sets (sampling weights {weights}); heavy augmentation:
  scale 0.5-2x, any rotation, flips, gamma, contrast, brightness, colour, grey inversion,
  RGB -> grey, blur, noise. Inputs: per-image 1-99.8 % percentiles -> 0-1, grey repeated to RGB,
  then ImageNet mean/std (recorded in the header; `start_normalization` applies the same).
- Run: {steps} steps ({samples} patches) in {minutes:.1f} min on {machine}; the machine was
  shared with other jobs (load average {load}).
  Training loss (mean over the logging window) {first_loss:.3f} at step {first_step} ->
  {last_loss:.3f} at step {last_step}; per set at the end: {per_set}.
- Images (TRAIN splits only; no image any benchmark scores was seen):
{images}
- Never used: `usiigaci_phase_contrast`, `hotosm_fair_buildings` (never-seen benchmark sets),
  every test split (ISBI slices 20-29, Dubai tile 8, meta.csv `test` rows),
  `drosophila_vnc_sstem` (CC BY-NC-SA, non-commercial), `spacenet_rio_buildings`
  (CC BY-SA share-alike; kept as an unseen aerial set).
- Only the encoder is shipped (decoder and heads are discarded); features 14-18 (the fifth
  stage, unused at depth 4) keep their ImageNet values.
- This file: `{file}`, {size} bytes, sha256 `{sha}`.
- Licence: BSD-3-Clause, like napari-semseg. It derives from torchvision's ImageNet weights
  (BSD-3-Clause, Copyright (c) Soumith Chintala 2016) and was trained on: DSB 2018 / BBBC038
  (CC0; Caicedo et al., Nature Methods 16:1247, 2019), AxonDeepSeg SEM (MIT, (c) 2020
  ivadomed; Zaimi et al., Sci. Rep. 8:3816, 2018), ISBI 2012 EM training volume (no licence
  stated; Cardona et al. 2010, Arganda-Carreras et al. 2015 - cite the challenge) and the
  Dubai aerial set (Humans in the Loop / MBRSC, published open access, no licence file -
  cite it). The file holds network weights only, no images; the two sets without a stated
  licence are named here so that users can judge.
"""


def install(checkpoint: Path, sets_info: dict | None = None) -> dict:
    """Export the encoder of ``checkpoint`` into the package with its note and manifest entry."""
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as fh:
        info = json.loads(fh.metadata()["info"])
    model = MultiHead([DataSet(n, v["classes"], v["weight"], [], [], [], [], [])
                       for n, v in info["sets"].items()])
    load_checkpoint(model, checkpoint)
    out = WEIGHTS / f"{NAME}.safetensors"
    sha = export_encoder(model, out, info)
    _write_note(info, out, sha)
    entry = {"encoder": ENCODER, "file": out.name, "sha256": sha, "size_bytes": out.stat().st_size,
             "origin": f"ImageNet MobileNetV2 adapted by supervised training on "
                       f"{sum(info['images'].values())} microscopy and aerial images "
                       f"({info['steps']} steps)",
             "licence": "BSD-3-Clause (see the note for the training data)",
             "description": "ImageNet adapted to microscopy (EM, fluorescence, brightfield, SEM) "
                            "and aerial imagery",
             "note": f"{NAME}.md", "input_mean": list(IMAGENET_MEAN),
             "input_std": list(IMAGENET_STD)}
    record_start(NAME, entry)
    return entry


def _write_note(info: dict, out: Path, sha: str) -> None:
    curve = info["curve"]
    images = "\n".join(f"  - `{n}`: {v['images']} images ({v['classes']} classes): "
                       + ", ".join(v["ids"][:4]) + (", ..." if len(v["ids"]) > 4 else "")
                       for n, v in info["sets"].items())
    (WEIGHTS / f"{NAME}.md").write_text(NOTE.format(
        name=NAME, depth=DEPTH, decoder=",".join(map(str, DECODER)), lr=info["learning_rate"],
        lr_enc=info["learning_rate"] * 0.5, batch=info["batch_size"], patch=info["patch_size"],
        weights={n: v["weight"] for n, v in info["sets"].items()}, steps=info["steps"],
        samples=info["steps"] * info["batch_size"], minutes=info["seconds"] / 60,
        machine=info["machine"], load=info.get("load", "not recorded"),
        first_loss=curve[0]["loss"], first_step=curve[0]["step"],
        last_loss=curve[-1]["loss"], last_step=curve[-1]["step"], per_set=curve[-1]["per_set"],
        images=images, file=out.name, size=out.stat().st_size, sha=sha))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=shared_dir() / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "generalist")
    ap.add_argument("--time-budget", type=float, default=None, help="seconds of training")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--patch-size", type=int, default=192)
    ap.add_argument("--learning-rate", type=float, default=2e-3)
    ap.add_argument("--checkpoint-every", type=float, default=300.0, help="seconds")
    ap.add_argument("--log-every", type=int, default=25, help="steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    ap.add_argument("--install", action="store_true",
                    help="at the end, write the encoder into src/napari_semseg/weights")
    ap.add_argument("--export", type=Path, default=None,
                    help="only install the encoder of this checkpoint, no training")
    args = ap.parse_args(argv)
    if args.export is None and not (args.time_budget or args.steps):
        ap.error("give --time-budget and/or --steps")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.export is not None:
        print(json.dumps(install(args.export), indent=1))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    _, info = train(args)
    print(f"done: {info['steps']} steps in {info['seconds']:.0f} s; checkpoint in {args.out}")
    if args.install:
        print(json.dumps(install(args.out / "checkpoint.safetensors"), indent=1))


if __name__ == "__main__":
    main()
