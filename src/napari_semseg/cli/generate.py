"""``napari-semseg train-generator`` and ``napari-semseg synthesize``: label maps to images.

``train-generator`` trains a conditional generator from images and their label maps (files, or
folders paired by name as for ``train``); ``synthesize`` turns a label map of any size into an
image, tile by tile, written chunk by chunk to TIFF or zarr. Every check (files, generator
kind, label values, shapes, output) runs before any work; a problem is one line and exit 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from napari_semseg.core.generation.settings import GeneratorSettings, SynthesizeSettings

from .options import add_settings_arguments, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train-generator`` and ``synthesize`` subcommands."""
    t = sub.add_parser(
        "train-generator", help="train an image generator from images and their label maps",
        description="Train a conditional generator (label map -> image) from images and label "
                    "maps (0 = not annotated, 1..K = classes). Images and labels are files, or "
                    "folders whose files are paired by name (img.tif <-> img_labels.tif ...). "
                    "The generator is written to --output after every epoch (atomically); "
                    "--resume continues an interrupted run.")
    t.add_argument("--images", "-i", nargs="+", required=True, help="image files or folders")
    t.add_argument("--labels", "-l", nargs="+", required=True,
                   help="label-map files or folders, one per image")
    t.add_argument("--output", "-o", required=True, help="generator file to write "
                                                         "(.safetensors)")
    t.add_argument("--generator", "-g", default=None,
                   help="generator file to continue training (default: a new generator)")
    t.add_argument("--class-names", default=None, help="comma-separated names of classes 1..K")
    t.add_argument("--class-colors", default=None, help="comma-separated #rrggbb colours")
    t.add_argument("--channel-axis", type=int, default=None,
                   help="axis of the images that holds channels (default: inferred from the "
                        "label maps' shape)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    add_settings_arguments(t, GeneratorSettings, skip=("checkpoint",))
    t.set_defaults(run=run_train)

    s = sub.add_parser(
        "synthesize", help="generate an image from a label map with a generator",
        description="Generate an image from a label map of any size (0 = unconstrained, "
                    "1..K = the generator's classes), tile by tile; the output is written "
                    "chunk by chunk and appears when complete.")
    s.add_argument("labels", metavar="LABELS", help="label map file (TIFF, zarr, PNG, .npy)")
    s.add_argument("--generator", "-g", required=True, help="generator file (.safetensors)")
    s.add_argument("--output", "-o", required=True, help="image to write (.tif or .zarr)")
    add_settings_arguments(s, SynthesizeSettings)
    s.set_defaults(run=run_synthesize)


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",")] if text else None


def _follow(job: Any, bar: Any) -> Any:
    """Drive a training job, showing its events on ``bar``; return the job's result."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if event.message:
            bar.write(event.message)
        if bar.unit == "s":
            bar.n = min(event.elapsed, bar.total)
        else:
            bar.total, bar.n = event.total_steps, event.step
        post: dict[str, object] = {"epoch": event.epoch}
        if math.isfinite(event.loss):  # no "loss nan" before the first step
            post["loss G"] = f"{event.loss:.3f}"
        if "loss_d" in event.metrics:
            post["loss D"] = f"{event.metrics['loss_d']:.3f}"
        bar.set_postfix(post, refresh=False)
        bar.refresh()


def run_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_semseg.core.errors import SemSegError
    from napari_semseg.core.generation.train import iter_train_generator

    from .train import pair_inputs

    output = Path(args.output)
    if not output.name.lower().endswith(".safetensors"):
        raise SemSegError(f"--output {output} must be a .safetensors file")
    settings = settings_from_args(GeneratorSettings, args)
    settings.checkpoint = str(output)
    settings = settings.validated()
    if output.exists() and not (args.overwrite or settings.resume):
        raise SemSegError(f"{output} exists; pass --overwrite to replace it or --resume to "
                          "continue training it")
    pairs = pair_inputs(args.images, args.labels)
    job = iter_train_generator([str(i) for i, _ in pairs], [str(lab) for _, lab in pairs],
                               settings, generator=args.generator,
                               class_names=_split(args.class_names),
                               class_colors=_split(args.class_colors),
                               channel_axis=args.channel_axis)
    by_time = settings.steps is None and settings.time_budget is not None
    bar = tqdm(total=settings.time_budget if by_time else None, unit="s" if by_time else "step",
               desc="train-generator", file=sys.stderr, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}" if by_time else None)
    try:
        model = _follow(job, bar)
    except KeyboardInterrupt:
        bar.close()
        print(f"napari-semseg train-generator: interrupted; {output} holds the generator of the "
              "last finished epoch, if any; continue with --resume", file=sys.stderr)
        return 130
    bar.close()
    tr = model.metadata.training
    print(f"{output}: {tr['steps']} steps, {tr['epochs']} epochs, {tr['time_s']:.0f} s")
    return 0


def run_synthesize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_semseg.core.generation.synthesize import prepare, run_job

    settings = settings_from_args(SynthesizeSettings, args).validated()
    job = prepare(args.labels, args.generator, settings, args.output)
    bar = tqdm(total=job.grid.n_tiles * job.source.n_planes, unit="tile", desc="synthesize",
               file=sys.stderr, dynamic_ncols=True)
    run = run_job(job)
    try:
        while True:
            try:
                event = next(run)
            except StopIteration as stop:
                result = stop.value
                break
            bar.n = event.done
            bar.refresh()
    except KeyboardInterrupt:
        run.close()
        bar.close()
        print("napari-semseg synthesize: interrupted; nothing was written under "
              f"{args.output}", file=sys.stderr)
        return 130
    bar.close()
    shape = "x".join(str(s) for s in result.image.shape)
    print(f"{result.path}: {shape} {result.image.dtype}, seed {settings.seed}")
    return 0
