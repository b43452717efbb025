"""``napari-semseg predict``: segment files or folders, one output per input.

Locally, or on a dask cluster (``--scheduler ADDRESS`` for a running scheduler, e.g. one started
by dask-jobqueue on SLURM, or ``--local-cluster N`` for N worker processes on this machine).
With ``--resume`` an interrupted run continues where it stopped (only missing chunks are
computed) and inputs whose output is complete are skipped; a summary ends every run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_semseg.core.settings import PredictSettings

from .options import add_settings_arguments, settings_from_args

CONNECT_TIMEOUT = "10s"  # to reach a dask scheduler given with --scheduler
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
    cluster = p.add_argument_group("cluster (dask.distributed)")
    where = cluster.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on the workers of the dask scheduler at ADDRESS "
                            "(e.g. tcp://10.0.0.5:8786); inputs, model and outputs must be on a "
                            "filesystem all workers share")
    where.add_argument("--local-cluster", metavar="N", type=int,
                       help="start N dask worker processes on this machine and run on them "
                            "(one per GPU; on a CPU-only machine 1 is fastest: a worker uses "
                            "all cores)")
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


def connect(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(client, cluster)`` for ``--scheduler`` / ``--local-cluster``, else ``(None, None)``."""
    from napari_semseg.core.errors import SemSegError

    if args.scheduler is None and args.local_cluster is None:
        return None, None
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - distributed is a dependency
        raise SemSegError("--scheduler/--local-cluster need dask.distributed: "
                          "pip install distributed") from exc
    if args.scheduler is not None:
        try:
            return Client(args.scheduler, timeout=CONNECT_TIMEOUT), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise SemSegError(f"cannot connect to the dask scheduler at {args.scheduler}: "
                              f"{exc}") from None
    if args.local_cluster < 1:
        raise SemSegError(f"--local-cluster needs at least 1 worker, got {args.local_cluster}")
    cluster = LocalCluster(n_workers=args.local_cluster, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=40)
    return Client(cluster), cluster


def output_layout(inputs: list[Path], output: Path) -> bool:
    """Check the output name; True when it is a folder receiving one output per input."""
    from napari_semseg.core.errors import SemSegError

    is_file_output = output.name.lower().endswith((".zarr", ".tif", ".tiff"))
    if not is_file_output and output.suffix and not output.is_dir():
        raise SemSegError(f"output {output} must end in .zarr, .ome.zarr, .tif or .tiff, or be a "
                          "folder")
    many = len(inputs) > 1 or not is_file_output
    if many and output.exists() and not output.is_dir():
        raise SemSegError(f"--output {output} must be a folder when segmenting several inputs")
    return many


def plan_jobs(inputs: list[Path], output: Path, fmt: str, settings: PredictSettings,
              in_channels: int) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """``(jobs, skipped)``: every input opened and every output checked before any work."""
    from napari_semseg.core.errors import SemSegError
    from napari_semseg.core.io import open_image
    from napari_semseg.core.writers import check_output, is_complete

    many = output_layout(inputs, output)
    if many:
        output.mkdir(parents=True, exist_ok=True)
    jobs, skipped = [], []
    written: dict[Path, Path] = {}
    companions = [name for name, wanted in (("probabilities", settings.probabilities),
                                            ("uncertainty", settings.uncertainty_kind)) if wanted]
    for inp in inputs:
        out = output_for(inp, output, fmt, many)
        if out.resolve() in written:
            raise SemSegError(f"inputs {written[out.resolve()]} and {inp} would both be written "
                              f"to {out}; segment them into different --output folders")
        written[out.resolve()] = inp
        open_image(inp, settings.channel_axis, expected_channels=in_channels)
        if settings.resume and is_complete(out):
            skipped.append(inp)
            print(f"{inp}: {out} is already complete, skipped")
            continue
        check_output(out, settings.overwrite, settings.resume, inputs=inputs,
                     companions=companions)
        jobs.append((inp, out))
    return jobs, skipped


def segment_one(inp: Path, out: Path, model: Any, settings: PredictSettings, client: Any,
                unit: str) -> None:
    """Segment one input with a progress bar (created at the first event, so that input errors
    print one line only)."""
    from tqdm import tqdm

    from napari_semseg.core.predict import iter_segment

    bar = None
    try:
        for event in iter_segment(inp, model, settings, output=out, client=client):
            if bar is None:
                if "resuming" in event.message:
                    print(f"{inp}: {event.message}", file=sys.stderr)
                bar = tqdm(total=event.total, unit=unit, desc=inp.name, file=sys.stderr)
            bar.total = event.total
            bar.n = event.done
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()
    print(f"{inp} -> {out}")


def segment_all(jobs: list[tuple[Path, Path]], model: Any, settings: PredictSettings,
                client: Any, stop_on_error: bool) -> list[Path]:
    """Segment every job; a failing input is reported in one line and the others go on (unless
    ``stop_on_error``: then its error is raised). Returns the failed inputs."""
    from napari_semseg.core.errors import SemSegError

    unit = "chunk" if client is not None else "tile"
    failed = []
    for inp, out in jobs:
        try:
            segment_one(inp, out, model, settings, client, unit)
        except (SemSegError, RuntimeError, OSError) as exc:
            if stop_on_error:
                raise
            print(f"napari-semseg predict: {inp}: error: {exc}", file=sys.stderr)
            failed.append(inp)
    return failed


def run(args: argparse.Namespace) -> int:
    from napari_semseg.core.models import load_model

    settings = settings_from_args(PredictSettings, args).validated()
    model = load_model(args.model)
    inputs = expand_inputs(args.inputs)
    # validate everything before any work starts
    jobs, skipped = plan_jobs(inputs, Path(args.output), args.format, settings,
                              model.metadata.in_channels)
    client, cluster = connect(args)
    # workers load the model from its file once each; locally the loaded model is reused
    use_model: Any = str(Path(args.model).resolve()) if client is not None else model
    try:
        failed = segment_all(jobs, use_model, settings, client,
                             stop_on_error=len(jobs) == 1 and not skipped)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    if len(inputs) > 1 or settings.resume:
        print(f"summary: {len(jobs) - len(failed)} done, {len(skipped)} skipped (already "
              f"complete), {len(failed)} failed")
    return 1 if failed else 0
