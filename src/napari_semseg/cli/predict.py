"""``napari-semseg predict``: segment files or folders, one output per input."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_semseg.core.settings import PredictSettings

from .options import add_settings_arguments, settings_from_args

IMAGE_SUFFIXES = (".tif", ".tiff", ".zarr", ".png", ".jpg", ".jpeg", ".npy")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment images with a model",
                       description="Segment images tile by tile; one output per input.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("--model", "-m", required=True, help="model file (.safetensors)")
    p.add_argument("--output", "-o", required=True,
                   help="output .zarr/.tif for one input, or a folder for several inputs")
    p.add_argument("--format", choices=("zarr", "tif"), default="zarr",
                   help="output format when --output is a folder (default: zarr)")
    add_settings_arguments(p, PredictSettings)
    p.set_defaults(run=run)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given; folders expanded to the images they contain (sorted)."""
    from napari_semseg.core.errors import SemSegError

    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise SemSegError(f"input {path} does not exist")
        if path.is_dir() and not path.name.lower().endswith(".zarr"):
            found = sorted(p for p in path.iterdir()
                           if p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.startswith("."))
            if not found:
                raise SemSegError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        else:
            out.append(path)
    return out


def output_for(inp: Path, output: Path, fmt: str, many: bool) -> Path:
    if not many and output.suffix.lower() in (".zarr", ".tif", ".tiff"):
        return output
    stem = inp.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr") + IMAGE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return output / f"{stem}_labels.{fmt}"


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_semseg.core.errors import SemSegError
    from napari_semseg.core.io import open_image
    from napari_semseg.core.models import load_model
    from napari_semseg.core.predict import iter_segment
    from napari_semseg.core.writers import check_output

    settings = settings_from_args(PredictSettings, args).validated()
    model = load_model(args.model)
    inputs = expand_inputs(args.inputs)
    output = Path(args.output)
    is_file_output = output.name.lower().endswith((".zarr", ".tif", ".tiff"))
    if not is_file_output and output.suffix and not output.is_dir():
        raise SemSegError(f"output {output} must end in .zarr, .ome.zarr, .tif or .tiff, or be a "
                          "folder")
    many = len(inputs) > 1 or not is_file_output
    if many:
        if output.exists() and not output.is_dir():
            raise SemSegError(f"--output {output} must be a folder when segmenting several inputs")
        output.mkdir(parents=True, exist_ok=True)
    # validate everything before any work starts
    jobs, skipped = [], []
    for inp in inputs:
        out = output_for(inp, output, args.format, many)
        open_image(inp, settings.channel_axis, expected_channels=model.metadata.in_channels)
        if out.exists() and settings.resume and not out.with_name(out.name + ".partial").exists():
            skipped.append(inp)
            continue
        check_output(out, settings.overwrite, settings.resume)
        jobs.append((inp, out))
    failed = []
    for inp, out in jobs:
        bar = None  # created at the first event, so that input errors print one line only
        try:
            for event in iter_segment(inp, model, settings, output=out):
                if bar is None:
                    bar = tqdm(total=event.total, unit="tile", desc=inp.name, file=sys.stderr)
                bar.total = event.total
                bar.n = event.done
                bar.refresh()
            if bar is not None:
                bar.close()
            print(f"{inp} -> {out}")
        except SemSegError as exc:
            if bar is not None:
                bar.close()
            if len(jobs) == 1:
                raise
            print(f"napari-semseg predict: {inp}: error: {exc}", file=sys.stderr)
            failed.append(inp)
    if len(inputs) > 1:
        print(f"summary: {len(jobs) - len(failed)} done, {len(skipped)} skipped (already "
              f"complete), {len(failed)} failed")
    return 1 if failed else 0
