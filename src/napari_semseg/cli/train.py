"""``napari-semseg train``: train a model from images and painted annotations (files or folders)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from napari_semseg.core.settings import TrainSettings

from .options import add_settings_arguments, settings_from_args

LABEL_SUFFIXES = ("", "_labels", "_label", "_annotations", "_annotation", "_scribbles",
                  "_mask", "_masks", "_gt")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model from images and painted annotations",
        description="Train a segmentation model from images and label images (0 = not "
                    "annotated, 1..K = classes; sparse strokes or dense masks). Images and "
                    "labels are files, or folders whose files are paired by name "
                    "(img.tif <-> img.tif, img_labels.tif, img_scribbles.tif, img_mask.png ...). "
                    "The model is written to --output after every epoch (atomically), so an "
                    "interrupted run leaves the last good model there; --resume continues it.")
    p.add_argument("--images", "-i", nargs="+", required=True, help="image files or folders")
    p.add_argument("--labels", "-l", nargs="+", required=True,
                   help="label files or folders, one per image (same order, or matched by name)")
    p.add_argument("--output", "-o", required=True, help="model file to write (.safetensors)")
    p.add_argument("--model", "-m", default=None,
                   help="model file to fine-tune or continue (default: a new model)")
    p.add_argument("--class-names", default=None,
                   help="comma-separated names of classes 1..K (more names than the model's "
                        "classes add classes when fine-tuning)")
    p.add_argument("--class-colors", default=None, help="comma-separated #rrggbb colours")
    p.add_argument("--channel-axis", type=int, default=None,
                   help="axis of the images that holds channels (default: inferred from the "
                        "label shape)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    add_settings_arguments(p, TrainSettings, skip=("checkpoint",))
    p.set_defaults(run=run)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".png",
                   ".jpg", ".jpeg", ".npy"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def pair_inputs(images: list[str], labels: list[str]) -> list[tuple[Path, Path]]:
    """Image/label file pairs: same order for files, matched by name for folders."""
    from napari_semseg.core.errors import SemSegError

    from .predict import expand_inputs

    img_files = expand_inputs(images)
    label_items = [Path(x) for x in labels]
    for item in label_items:
        if not item.exists():
            raise SemSegError(f"labels {item} do not exist")
    folders = [x for x in label_items if x.is_dir() and not x.name.lower().endswith(".zarr")]
    if not folders:
        if len(label_items) != len(img_files):
            raise SemSegError(f"{len(img_files)} image(s) but {len(label_items)} label file(s); "
                              "give one label file per image, or folders with matching names")
        return list(zip(img_files, label_items, strict=True))
    candidates: dict[str, Path] = {}
    for item in expand_inputs(labels):
        candidates.setdefault(_stem(item), item)
    pairs = []
    for img in img_files:
        stem = _stem(img)
        match = next((candidates[stem + s] for s in LABEL_SUFFIXES if stem + s in candidates
                      and candidates[stem + s] != img), None)
        if match is None:
            raise SemSegError(f"no label file for {img.name} (looked for {stem}"
                              f"{{{','.join(LABEL_SUFFIXES[1:])}}}.* in the --labels folders)")
        pairs.append((img, match))
    return pairs


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",")] if text else None


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_semseg.core.errors import SemSegError
    from napari_semseg.core.train import iter_train

    output = Path(args.output)
    if not output.name.lower().endswith(".safetensors"):
        raise SemSegError(f"--output {output} must be a .safetensors file")
    settings = settings_from_args(TrainSettings, args)
    settings.checkpoint = str(output)
    settings = settings.validated()
    if output.exists() and not (args.overwrite or settings.resume):
        raise SemSegError(f"{output} exists; pass --overwrite to replace it or --resume to "
                          "continue training it")
    pairs = pair_inputs(args.images, args.labels)
    job = iter_train([str(i) for i, _ in pairs], [str(lab) for _, lab in pairs], settings,
                     model=args.model, class_names=_split(args.class_names),
                     class_colors=_split(args.class_colors), channel_axis=args.channel_axis)
    by_time = settings.epochs is None and settings.time_budget is not None
    bar = tqdm(total=settings.time_budget if by_time else None, unit="s" if by_time else "step",
               desc="train", file=sys.stderr, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}" if by_time else None)
    last = None
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                model = stop.value
                break
            last = event
            if event.message:
                bar.write(event.message)
            if by_time:
                bar.n = min(event.elapsed, bar.total)
            else:
                bar.total = event.total_steps
                bar.n = event.step
            post: dict[str, object] = {"epoch": event.epoch}
            if math.isfinite(event.loss):  # no "loss nan" before the first step
                post["loss"] = f"{event.loss:.4f}"
            if event.metrics:
                post["val mIoU"] = f"{event.metrics.get('mean_iou', float('nan')):.3f}"
            bar.set_postfix(post, refresh=False)
            bar.refresh()
    except KeyboardInterrupt:
        bar.close()
        epochs = last.epoch if last is not None else 0
        print(f"napari-semseg train: interrupted; {output} holds the model of the last finished "
              f"epoch ({epochs}) if any; continue with --resume", file=sys.stderr)
        return 130
    bar.close()
    tr = model.metadata.training
    best = tr.get("best_metrics") or {}
    summary = f"{output}: {tr['steps']} steps, {tr['epochs']} epochs, {tr['time_s']:.0f} s"
    if best:
        summary += f", validation mean IoU {best['mean_iou']:.3f} (epoch {tr['best_epoch']})"
    print(summary)
    return 0
