"""GPU pipeline: end-to-end throughput against the raw forward on the same GPU (issue 5, 5a).

Unet-resnet34 (1 channel, 2 classes) on a >= 1 gigapixel uint8 zarr on disk (32768² by
default) written to an OME-Zarr, on CUDA with the engine's defaults there (bf16/fp16 autocast,
channels_last, tile and batch from free GPU memory, prefetch thread, pinned non-blocking
copies, accumulation and argmax on the GPU, background writer):

- **raw forward**: the engine's tile and batch, same precision and memory format, random input
  already on the GPU, softmax included, in a tight loop (``torch.cuda.synchronize`` around);
- **end-to-end**: :func:`napari_semseg.segment` (zarr in -> OME-Zarr with pyramid out).

Target: end-to-end Mpx/s / raw Mpx/s >= 0.8. Also reported: the tile efficiency (raw time of
the tiles computed / end-to-end time), the CPU-side input rate (reading and stacking the tiles
alone) and the GPU. Without a GPU the script says so and writes nothing.

Usage::

    python benchmarks/bench_gpu.py [--size 32768] [--encoder resnet34] [--compile]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CACHE, machine, md_table, median, synthetic_zarr, unet_resnet,  # noqa: E402
                    write_results)


def raw_forward(model, tile: int, batch: int, seconds: float, compile: bool) -> dict:
    import torch

    from napari_semseg.core.device import autocast

    device = torch.device("cuda")
    net = model.to(device).eval().to(memory_format=torch.channels_last)
    fwd = torch.compile(net) if compile else net
    x = torch.randn(batch, 1, tile, tile, device=device).contiguous(
        memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, True):
        for _ in range(3):
            fwd(x).float().softmax(1)
        torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fwd(x).float().softmax(1)
            n += 1
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    return {"mpx_s": n * batch * tile * tile / 1e6 / dt, "passes": n,
            "seconds_per_tile": dt / (n * batch)}


def input_rate(path: Path, tile: int, overlap: int, chunk: int, limit: int = 200) -> float:
    """Mpx/s at which the prefetch path alone reads and stacks tiles (CPU side)."""
    from napari_semseg.core.io import open_image
    from napari_semseg.core.predict import read_tile
    from napari_semseg.core.tiling import TileGrid

    source = open_image(path)
    grid = TileGrid.plan(source.plane_shape, tile, overlap, 32, chunk)
    tiles = grid.tiles()[:limit]
    t0 = time.perf_counter()
    for i, j in tiles:
        read_tile(source, 0, grid, i, j)
    return len(tiles) * tile * tile / 1e6 / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32768)
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU is available on this machine; nothing measured.")
        return
    from napari_semseg import segment
    from napari_semseg.core.io import open_image
    from napari_semseg.core.predict import plan_tiles
    from napari_semseg.core.settings import PredictSettings
    from napari_semseg.core.tiling import TileGrid

    image = synthetic_zarr(CACHE / f"gpu_{args.size}.zarr", (args.size, args.size))
    model = unet_resnet(args.encoder)
    device = torch.device("cuda")
    settings = PredictSettings(device="cuda", compile=args.compile)
    plan = plan_tiles(open_image(image), model, settings, device)
    grid = TileGrid.plan((args.size, args.size), plan.tile, plan.overlap, 32, plan.chunk)
    out = CACHE / "gpu_out.zarr"
    rounds = []
    for _ in range(args.rounds):
        raw = raw_forward(model, plan.tile, plan.batch_size, 20.0, args.compile)
        shutil.rmtree(out, ignore_errors=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        segment(image, model, settings=settings, output=out)
        seconds = time.perf_counter() - t0
        e2e = args.size ** 2 / 1e6 / seconds
        rounds.append({"raw_mpx_s": raw["mpx_s"], "end_to_end_mpx_s": e2e, "seconds": seconds,
                       "ratio": e2e / raw["mpx_s"],
                       "tile_efficiency": grid.n_tiles * raw["seconds_per_tile"] / seconds})
        print(rounds[-1], file=sys.stderr, flush=True)
    shutil.rmtree(out, ignore_errors=True)
    summary = {k: median([r[k] for r in rounds]) for k in rounds[0]}
    summary["input_mpx_s_cpu_side"] = input_rate(image, plan.tile, plan.overlap, plan.chunk)
    info = machine()
    table = (f"Unet-{args.encoder}, {args.size}² ({args.size ** 2 / 1e9:.2f} Gpx) uint8 zarr -> "
             f"OME-Zarr on {info['gpu']} (CPU {info['cpu']}, {info['cores']} cores); tile "
             f"{plan.tile}, overlap {plan.overlap}, batch {plan.batch_size}, AMP, channels_last"
             f"{', torch.compile' if args.compile else ''}; median of {args.rounds} rounds.\n\n"
             + md_table(["raw forward Mpx/s", "end-to-end Mpx/s", "end-to-end / raw (target "
                         ">= 0.8)", "tile efficiency", "CPU-side tile input Mpx/s"],
                        [[summary["raw_mpx_s"], summary["end_to_end_mpx_s"], summary["ratio"],
                          summary["tile_efficiency"], summary["input_mpx_s_cpu_side"]]]))
    write_results("gpu", {"machine": info, "size": args.size, "encoder": args.encoder,
                          "plan": vars(plan), "rounds": rounds, "median": summary}, table)


if __name__ == "__main__":
    main()
