"""dask.distributed scale-out on one machine (issue 5, item 5b).

Unet-resnet18, default settings, a uint8 zarr on disk written to an OME-Zarr; on this machine:

- ``local``: :func:`segment` in this process (the threaded local engine);
- ``cluster 1x1``: ``LocalCluster(n_workers=1, threads_per_worker=1)`` (the worker's torch uses
  all cores);
- ``cluster 2x1``: ``LocalCluster(n_workers=2, threads_per_worker=1)`` (each worker's torch gets
  half the cores);
- ``cluster 1x2``: ``LocalCluster(n_workers=1, threads_per_worker=2)``.

Each cluster is warmed up first (workers import torch and load the model once, as they would
for the first of many images); the timed run then segments the image. Reported: seconds, Mpx/s,
speed-up of 2 worker processes over 1, the overhead of the cluster against the local run, the
tiles computed (blocks recompute their border tiles) and that every output equals the local one.

Usage::

    python benchmarks/bench_cluster.py [--size 6144]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CACHE, machine, md_table, synthetic_zarr, unet_resnet, write_results  # noqa: E402

CONFIGS = {"cluster 1x1": (1, 1), "cluster 2x1": (2, 1), "cluster 1x2": (1, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=6144)
    parser.add_argument("--configs", default="local," + ",".join(CONFIGS))
    args = parser.parse_args()

    import torch
    import zarr
    from distributed import Client, LocalCluster

    from napari_semseg import save_model, segment
    from napari_semseg.core import distributed as dist
    from napari_semseg.core.io import open_image
    from napari_semseg.core.predict import plan_tiles
    from napari_semseg.core.settings import PredictSettings
    from napari_semseg.core.tiling import TileGrid

    CACHE.mkdir(parents=True, exist_ok=True)
    model_file = save_model(unet_resnet("resnet18"), CACHE / "cluster_model.safetensors")
    image = synthetic_zarr(CACHE / f"eff_{args.size}.zarr", (args.size, args.size))
    warm = synthetic_zarr(CACHE / "cluster_warm.zarr", (1024, 1024))
    plan = plan_tiles(open_image(image), unet_resnet("resnet18"), PredictSettings(),
                      torch.device("cpu"))
    grid = TileGrid.plan((args.size, args.size), plan.tile, plan.overlap, 32, plan.chunk)
    mpx = args.size ** 2 / 1e6
    runs: dict[str, dict] = {}
    reference = None
    for name in args.configs.split(","):
        out = CACHE / f"cluster_{name.replace(' ', '_')}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        print(f"{name} ...", file=sys.stderr, flush=True)
        if name == "local":
            segment(warm, str(model_file), device="cpu")  # warm-up, as for the workers
            t = time.perf_counter()
            segment(image, str(model_file), device="cpu", output=out)
            seconds = time.perf_counter() - t
            tiles = grid.n_tiles
            blocks = 1
        else:
            workers, threads = CONFIGS[name]
            with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                              dashboard_address=None, silence_logs=40) as cluster, \
                    Client(cluster) as client:
                segment(warm, str(model_file), device="cpu", client=client)
                t = time.perf_counter()
                segment(image, str(model_file), device="cpu", output=out, client=client)
                seconds = time.perf_counter() - t
            n_threads = workers * threads
            blocks = dist.blocks_for(grid.chunk_counts, n_threads)
            tiles = sum(len(grid.tiles_for(b)) for b in
                        dist.plan_blocks(grid.chunks(), grid.chunk_counts, blocks))
        labels = zarr.open_group(str(out), mode="r")["0"][:]
        if reference is None:
            reference = labels
        runs[name] = {"seconds": seconds, "mpx_s": mpx / seconds, "tiles": tiles,
                      "blocks": blocks, "equal_to_first": bool(np.array_equal(labels, reference))}
        print(runs[name], file=sys.stderr, flush=True)
        shutil.rmtree(out, ignore_errors=True)
    ratios = {}
    if "cluster 1x1" in runs and "cluster 2x1" in runs:
        ratios["speed-up, 2 worker processes over 1"] = (runs["cluster 1x1"]["seconds"]
                                                         / runs["cluster 2x1"]["seconds"])
    for name in CONFIGS:
        if name in runs and "local" in runs:
            ratios[f"{name} time / local time"] = runs[name]["seconds"] / runs["local"]["seconds"]
    info = machine()
    rows = [[name, r["seconds"], r["mpx_s"], r["blocks"], r["tiles"], r["equal_to_first"]]
            for name, r in runs.items()]
    table = (f"Unet-resnet18, default settings (tile {plan.tile}, overlap {plan.overlap}, chunk "
             f"{plan.chunk}), {args.size}² uint8 zarr -> OME-Zarr, CPU ({info['cpu']}, "
             f"{info['cores']} cores), load average at start {info['load_average'][0]:.1f}.\n\n"
             + md_table(["run", "seconds", "image Mpx/s", "blocks", "tiles computed",
                         "output equals local"], rows)
             + "\n\n" + md_table(["ratio", "value"], [[k, v] for k, v in ratios.items()]))
    write_results("cluster", {"machine": info, "size": args.size, "runs": runs,
                              "ratios": ratios,
                              "plan": {"tile": plan.tile, "overlap": plan.overlap,
                                       "chunk": plan.chunk, "tiles_local": grid.n_tiles}},
                  table)


if __name__ == "__main__":
    main()
