"""``napari-semseg evaluate``: score a segmentation, or a model on an image, against ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_semseg.core.settings import PredictSettings, option_fields

from .options import add_settings_arguments, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="score a segmentation or a model against ground truth",
        description="Per-class IoU, Dice, precision and recall, accuracy, mean IoU and the "
                    "confusion matrix of a label image (or of a model segmenting --image) "
                    "against ground truth; printed as a table and optionally written as JSON.")
    p.add_argument("prediction", metavar="PREDICTION_OR_MODEL",
                   help="label image (TIFF, zarr, PNG, .npy) or model file (.safetensors)")
    p.add_argument("--truth", "-t", required=True, help="ground-truth label image")
    p.add_argument("--image", "-i", default=None, help="image to segment when a model is given")
    p.add_argument("--ignore", type=int, nargs="*", default=[0],
                   help="ground-truth values not scored (default: 0; e.g. --ignore 0 255)")
    p.add_argument("--class-names", default=None, help="comma-separated names of classes 1..K")
    p.add_argument("--classes", type=int, default=None,
                   help="number of classes K (default: the model's, else the largest label)")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    p.add_argument("--overwrite", action="store_true",  # the report is evaluate's output
                   help=option_fields(PredictSettings)["overwrite"].help)
    add_settings_arguments(p, PredictSettings,
                           skip=("probabilities", "uncertainty", "overwrite", "resume"))
    p.set_defaults(run=run)


def _check_json_target(path: Path, overwrite: bool) -> None:
    """Before any scoring: the report's folder exists and is writable, and an existing report
    is replaced only with --overwrite."""
    import os

    from napari_semseg.core.errors import SemSegError

    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SemSegError(f"the folder of --json {path} does not exist; create it or choose "
                          "another file")
    if not os.access(folder, os.W_OK):
        raise SemSegError(f"cannot write --json {path}: its folder is not writable")
    if path.exists() and not overwrite:
        raise SemSegError(f"--json {path} exists; pass --overwrite to replace it")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from napari_semseg.core.evaluate import evaluate

    settings = settings_from_args(PredictSettings, args).validated()
    if args.json:
        _check_json_target(Path(args.json), args.overwrite)
    names = [t.strip() for t in args.class_names.split(",")] if args.class_names else None
    options = {k: v for k, v in asdict(settings).items()
               if k not in ("probabilities", "uncertainty", "overwrite", "resume")}
    device = options.pop("device")
    channel_axis = options.pop("channel_axis")
    report = evaluate(args.prediction, args.truth, args.image, ignore=args.ignore,
                      class_names=names, n_classes=args.classes, device=device,
                      channel_axis=channel_axis, **options)
    print(report.table())
    if args.json:
        report.to_json(args.json)
        print(f"report written to {args.json}")
    return 0
