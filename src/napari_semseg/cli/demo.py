"""``napari-semseg demo``: segment a bundled sample with its bundled model (and optionally train).

Writes ``<sample>_labels.tif`` and ``<sample>_overlay.png`` (image | prediction | ground truth) to
the output folder and prints the scores against the sample's ground truth. With ``--train`` it
first trains a model from the bundled EM scribbles on CPU (same trainer as ``napari-semseg train``)
and uses that model instead.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SAMPLES = {"em": "em_model.safetensors", "aerial": "aerial_model.safetensors"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="segment a bundled sample (optionally train first)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--sample", choices=sorted(SAMPLES), default="em", help="which sample (default em)")
    p.add_argument("--train", action="store_true",
                   help="train a model from the bundled EM scribbles first (about 2 minutes on CPU)")
    p.add_argument("--time-budget", type=float, default=90.0,
                   help="training budget in seconds with --train (default 90)")
    p.add_argument("--output-dir", default="napari-semseg-demo", help="where to write the results")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--overwrite", action="store_true", help="replace results of an earlier demo")
    p.set_defaults(run=run)


def _train(args: argparse.Namespace, out_dir: Path):
    """Train with ``napari-semseg train`` itself (same generator, same progress bar)."""
    from napari_semseg.core.errors import SemSegError
    from napari_semseg.core.models import load_model
    from napari_semseg.sample_data import sample_path

    from . import train as train_command

    if args.sample != "em":
        raise SemSegError("--train uses the EM scribbles; run it with --sample em")
    image = sample_path("em_train.tif")
    scribbles = sample_path("em_train_scribbles.tif")
    path = out_dir / "em_trained_model.safetensors"
    print(f"training on {image.name} with the painted strokes in {scribbles.name} "
          f"for {args.time_budget:.0f} s ...")
    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    train_args = parser.parse_args([
        "train", "--images", str(image), "--labels", str(scribbles), "--output", str(path),
        "--time-budget", str(args.time_budget), "--device", args.device, "--overwrite",
        "--class-names", "membrane,interior", "--class-colors", "#ff00ff,#00c8ff"])
    if train_command.run(train_args) != 0:
        raise SemSegError("training did not finish")
    return load_model(path)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import tifffile
    from PIL import Image

    from napari_semseg.core.errors import SemSegError
    from napari_semseg.core.evaluate import evaluate
    from napari_semseg.core.models import load_model
    from napari_semseg.core.overlay import overlay, panels
    from napari_semseg.core.predict import segment
    from napari_semseg.sample_data import sample_path

    out_dir = Path(args.output_dir)
    labels_path = out_dir / f"{args.sample}_labels.tif"
    overlay_path = out_dir / f"{args.sample}_overlay.png"
    for p in (labels_path, overlay_path):
        if p.exists() and not args.overwrite:
            raise SemSegError(f"{p} exists from an earlier demo; pass --overwrite to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    image_path = sample_path(f"{args.sample}.tif")
    truth = tifffile.imread(sample_path(f"{args.sample}_labels.tif"))
    model = _train(args, out_dir) if args.train else load_model(sample_path(SAMPLES[args.sample]))
    meta = model.metadata
    print(f"segmenting {image_path.name} with {meta.arch}/{meta.encoder} "
          f"({', '.join(meta.class_names)}) ...")
    result = segment(image_path, model, device=args.device, output=labels_path,
                     overwrite=args.overwrite)
    labels = np.asarray(result.labels[:])
    report = evaluate(labels, truth, class_names=meta.class_names)
    print(report.table())
    image = tifffile.imread(image_path)
    picture = panels([overlay(image, np.zeros_like(labels), meta.class_colors),
                      overlay(image, labels, meta.class_colors),
                      overlay(image, truth, meta.class_colors)],
                     ["image", f"prediction (mean IoU {report.mean_iou:.3f})", "ground truth"])
    Image.fromarray(picture).save(overlay_path)
    print(f"wrote {labels_path} and {overlay_path}")
    return 0
