"""Peak memory of out-of-core prediction (issue 2, item 11c).

Unet-resnet18 with default settings on uint8 images of 1, 16, 64 and 256 megapixels read lazily
from a zarr (or tiled TIFF) on disk and written to an OME-Zarr; plus a wide strip (3072 x 32768,
100 Mpx) to show that the blending bands kept between tiles stay bounded. Each size runs in a
fresh process; its peak resident memory (``VmHWM``) includes the Python interpreter, torch
(about 650 MiB resident after ``import torch`` here) and the model.

Target: the largest within 1.5x of the smallest, all under 2 GiB.

Usage::

    python benchmarks/bench_memory.py [--sizes 1,16,64,256] [--wide] [--tiff 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CACHE, machine, md_table, peak_rss_mib, rss_mib, run_child,  # noqa: E402
                    synthetic_zarr, unet_resnet, write_results)

SHAPES = {1: (1024, 1024), 16: (4096, 4096), 64: (8192, 8192), 256: (16384, 16384)}
WIDE = (3072, 32768)


def tiled_tiff(path: Path, shape: tuple[int, int]) -> Path:
    """A tiled TIFF copy of the synthetic zarr (written tile by tile)."""
    import tifffile
    import zarr

    if path.exists():
        return path
    src = zarr.open_array(str(synthetic_zarr(CACHE / f"mem_{shape[0]}x{shape[1]}.zarr", shape)),
                          mode="r")

    def tiles():
        for y in range(0, shape[0], 256):
            for x in range(0, shape[1], 256):
                block = src[y:y + 256, x:x + 256]
                out = block if block.shape == (256, 256) else \
                    __import__("numpy").pad(block, ((0, 256 - block.shape[0]),
                                                    (0, 256 - block.shape[1])))
                yield out

    tifffile.imwrite(path, tiles(), shape=shape, dtype="uint8", tile=(256, 256), bigtiff=True)
    return path


def child(kind: str, h: int, w: int) -> dict:
    from napari_semseg import segment

    base_import = rss_mib()
    model = unet_resnet("resnet18")
    if kind == "tiff":
        src = tiled_tiff(CACHE / f"mem_{h}x{w}.tif", (h, w))
    else:
        src = synthetic_zarr(CACHE / f"mem_{h}x{w}.zarr", (h, w))
    out = CACHE / f"mem_out_{os.getpid()}.zarr"  # one per process: runs never share an output
    shutil.rmtree(out, ignore_errors=True)
    base = rss_mib()
    t = time.perf_counter()
    segment(src, model, device="cpu", output=out, overwrite=True)
    seconds = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    return {"kind": kind, "shape": [h, w], "mpx": h * w / 1e6, "seconds": seconds,
            "mpx_s": h * w / 1e6 / seconds, "peak_rss_mib": peak_rss_mib(),
            "rss_after_imports_mib": base_import, "rss_before_run_mib": base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,16,64,256")
    parser.add_argument("--wide", action="store_true", help="also a 3072 x 32768 strip")
    parser.add_argument("--tiff", default="16", help="sizes (Mpx) also read from a tiled TIFF")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind")
    parser.add_argument("--shape")
    args = parser.parse_args()
    if args.child:
        h, w = (int(v) for v in args.shape.split("x"))
        print(json.dumps(child(args.kind, h, w)))
        return
    jobs = [("zarr", SHAPES[int(s)]) for s in args.sizes.split(",") if s]
    jobs += [("tiff", SHAPES[int(s)]) for s in args.tiff.split(",") if s]
    if args.wide:
        jobs.append(("zarr", WIDE))
    runs = []
    for kind, (h, w) in jobs:
        print(f"{kind} {h}x{w} ...", file=sys.stderr, flush=True)
        runs.append(run_child(Path(__file__), ["--kind", kind, "--shape", f"{h}x{w}"],
                              timeout=6 * 3600))
        print(runs[-1], file=sys.stderr, flush=True)
    peaks = [r["peak_rss_mib"] for r in runs]
    summary = {"max_over_min": max(peaks) / min(peaks), "max_peak_mib": max(peaks),
               "under_2_gib": max(peaks) < 2048}
    rows = [[f"{r['shape'][0]} x {r['shape'][1]}", r["mpx"], r["kind"], r["peak_rss_mib"],
             r["rss_before_run_mib"], r["seconds"], r["mpx_s"]] for r in runs]
    info = machine()
    table = (f"Unet-resnet18, default settings, CPU ({info['cpu']}, {info['cores']} cores); "
             "input read lazily from disk, output OME-Zarr; each size in a fresh process. "
             f"Largest/smallest peak: {summary['max_over_min']:.2f}x; max "
             f"{summary['max_peak_mib']:.0f} MiB.\n\n"
             + md_table(["image", "Mpx", "input", "peak RSS MiB",
                         "RSS before run (torch + model) MiB", "seconds", "Mpx/s"], rows))
    write_results("memory", {"machine": info, "runs": runs, "summary": summary}, table)


if __name__ == "__main__":
    main()
