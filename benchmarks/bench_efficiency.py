"""Efficiency of tiled prediction against the raw model forward (issue 2, item 11a).

Unet-resnet18 (1 channel, 2 classes) on the CPU. In one process, interleaved in rounds:

- **raw forward**, 512² tiles, batch 1, tight loop (forward + softmax): the model as built
  (NCHW, default allocator, fp32: "plain") and as the engine runs it (channels_last, freed
  activations kept for reuse, bf16 autocast on CPUs with native bf16: "engine config"); also
  at the engine's default tile size;
- **end-to-end** :func:`napari_semseg.segment` with default settings on a 4096² uint8 zarr on disk
  written to an OME-Zarr (reading, normalization, forward, blending, argmax, writing, pyramid),
  and with 512² tiles on a 2048² zarr.

(i) tile efficiency = (tiles computed x raw seconds per tile of that size, engine config) /
end-to-end seconds; (ii) image efficiency = image Mpx/s end-to-end / raw Mpx/s at 512² (against
both raw configurations). Each variant runs in a fresh process: default, glibc huge pages
(``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``) and the engine's heap reuse disabled
(``NAPARI_SEMSEG_MALLOC=0``).

Usage::

    python benchmarks/bench_efficiency.py [--rounds 3] [--variants default,hugetlb,noreuse]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CACHE, engine_model, machine, md_table, median, raw_forward_seconds,  # noqa: E402
                    run_child, synthetic_zarr, timed, unet_resnet, write_results)

VARIANTS = {
    "default": {},
    "hugetlb": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "noreuse": {"NAPARI_SEMSEG_MALLOC": "0"},
}


def child(rounds: int, size: int) -> dict:
    import torch

    from napari_semseg import segment
    from napari_semseg.core.device import precision_name
    from napari_semseg.core.io import open_image
    from napari_semseg.core.predict import plan_tiles
    from napari_semseg.core.settings import PredictSettings
    from napari_semseg.core.tiling import TileGrid

    model = unet_resnet("resnet18")
    fast = engine_model(model)
    big = synthetic_zarr(CACHE / f"eff_{size}.zarr", (size, size))
    small = synthetic_zarr(CACHE / "eff_2048.zarr", (2048, 2048))
    out = CACHE / "eff_out.zarr"
    plan = plan_tiles(open_image(big), model, PredictSettings(), torch.device("cpu"))
    grid = TileGrid.plan((size, size), plan.tile, plan.overlap, 32, plan.chunk)
    plan512 = plan_tiles(open_image(small), model, PredictSettings(tile=512),
                         torch.device("cpu"))
    grid512 = TileGrid.plan((2048, 2048), 512, plan512.overlap, 32, plan512.chunk)
    bf16 = precision_name(torch.device("cpu"), True) == "bf16"  # as the engine computes
    per_round = []
    for _ in range(rounds):
        r: dict = {}
        cpu: dict[str, list[float]] = {k: [] for k in ("p", "e", "t", "d", "s")}
        r["raw512_plain_s"] = median(raw_forward_seconds(model, 512, 6, cpu_times=cpu["p"]))
        r["raw512_engine_s"] = median(raw_forward_seconds(fast, 512, 6, channels_last=True,
                                                          heap_reuse=True, bf16=bf16,
                                                          cpu_times=cpu["e"]))
        r["raw_tile_engine_s"] = median(raw_forward_seconds(fast, plan.tile, 3,
                                                            channels_last=True, heap_reuse=True,
                                                            bf16=bf16, cpu_times=cpu["t"]))
        shutil.rmtree(out, ignore_errors=True)
        r["segment_default_s"], _ = timed(lambda: segment(big, fast, device="cpu", output=out,
                                                          overwrite=True), cpu["d"])
        shutil.rmtree(out, ignore_errors=True)
        r["segment_512_s"], _ = timed(lambda: segment(small, fast, device="cpu", tile=512,
                                                      output=out, overwrite=True), cpu["s"])
        for key, name in (("p", "raw512_plain"), ("e", "raw512_engine"),
                          ("t", "raw_tile_engine"), ("d", "segment_default"),
                          ("s", "segment_512")):
            r[f"{name}_cpu_s"] = median(cpu[key])
        per_round.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    mpx = size * size / 1e6
    derived = []
    for r in per_round:
        raw_plain = 0.262144 / r["raw512_plain_s"]
        raw_engine = 0.262144 / r["raw512_engine_s"]
        e2e = mpx / r["segment_default_s"]
        derived.append({
            "raw512_plain_mpx_s": raw_plain,
            "raw512_engine_mpx_s": raw_engine,
            "raw_tile_engine_mpx_s": plan.tile ** 2 / 1e6 / r["raw_tile_engine_s"],
            "end_to_end_mpx_s": e2e,
            "tile_efficiency_default": grid.n_tiles * r["raw_tile_engine_s"]
            / r["segment_default_s"],
            "image_efficiency_vs_plain": e2e / raw_plain,
            "image_efficiency_vs_engine": e2e / raw_engine,
            "tile_efficiency_512": grid512.n_tiles * r["raw512_engine_s"] / r["segment_512_s"],
            "end_to_end_512_mpx_s": 2048 * 2048 / 1e6 / r["segment_512_s"],
            # the same ratios from process CPU seconds (less disturbed by other jobs)
            "cpu_tile_efficiency_default": grid.n_tiles * r["raw_tile_engine_cpu_s"]
            / r["segment_default_cpu_s"],
            "cpu_image_efficiency_vs_plain": (mpx / r["segment_default_cpu_s"])
            / (0.262144 / r["raw512_plain_cpu_s"]),
            "cpu_image_efficiency_vs_engine": (mpx / r["segment_default_cpu_s"])
            / (0.262144 / r["raw512_engine_cpu_s"]),
            "cpu_tile_efficiency_512": grid512.n_tiles * r["raw512_engine_cpu_s"]
            / r["segment_512_cpu_s"],
        })
    summary = {k: median([d[k] for d in derived]) for k in derived[0]}
    return {"rounds": per_round, "derived": derived, "median": summary,
            "default_plan": {"tile": plan.tile, "overlap": plan.overlap, "chunk": plan.chunk,
                             "margin": plan.margin, "tiles": grid.n_tiles,
                             "computed_pixel_ratio": grid.computed_pixels() / size ** 2},
            "tile512_plan": {"tile": 512, "overlap": plan512.overlap, "chunk": plan512.chunk,
                             "tiles": grid512.n_tiles},
            "engine_precision": "bf16" if bf16 else "fp32",
            "image_px": size * size, "machine": machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--variants", default="default,hugetlb,noreuse")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        print(json.dumps(child(args.rounds, args.size)))
        return
    results = {"machine": machine(), "size": args.size, "variants": {}}
    for name in args.variants.split(","):
        print(f"variant {name} ...", file=sys.stderr, flush=True)
        results["variants"][name] = run_child(Path(__file__), ["--rounds", str(args.rounds),
                                                               "--size", str(args.size)],
                                              env=VARIANTS[name])
    rows = []
    for name, res in results["variants"].items():
        m = res["median"]
        rows.append([name, m["raw512_plain_mpx_s"], m["raw512_engine_mpx_s"],
                     m["raw_tile_engine_mpx_s"], m["end_to_end_mpx_s"],
                     m["tile_efficiency_default"], m["image_efficiency_vs_plain"],
                     m["image_efficiency_vs_engine"], m["tile_efficiency_512"]])
    cpu_rows = []
    for name, res in results["variants"].items():
        m = res["median"]
        cpu_rows.append([name, m["cpu_tile_efficiency_default"],
                         m["cpu_image_efficiency_vs_plain"], m["cpu_image_efficiency_vs_engine"],
                         m["cpu_tile_efficiency_512"]])
    plan = next(iter(results["variants"].values()))["default_plan"]
    table = (
        f"Unet-resnet18, CPU ({results['machine']['cpu']}, {results['machine']['cores']} cores), "
        f"{args.size}² uint8 zarr -> OME-Zarr; default tile {plan['tile']}, overlap "
        f"{plan['overlap']} (margin {plan['margin']}), chunk {plan['chunk']}: "
        f"{plan['tiles']} tiles, {plan['computed_pixel_ratio']:.2f}x the image's pixels; "
        f"engine precision {next(iter(results['variants'].values()))['engine_precision']} "
        "(plain: fp32). "
        f"Medians of {args.rounds} interleaved rounds; load average at start "
        f"{results['machine']['load_average'][0]:.1f}.\n\n"
        + md_table(["variant", "raw 512² plain Mpx/s", "raw 512² engine cfg Mpx/s",
                    f"raw {plan['tile']}² engine cfg Mpx/s", "end-to-end Mpx/s",
                    "(i) tile eff. default", "(ii) image eff. vs plain",
                    "(ii) image eff. vs engine cfg", "(i) tile eff. 512² tiles"], rows)
        + "\n\nThe same ratios from process CPU seconds (all threads; less disturbed by other "
        "jobs on a shared machine, but background reading/writing counts fully):\n\n"
        + md_table(["variant", "(i) tile eff. default", "(ii) image eff. vs plain",
                    "(ii) image eff. vs engine cfg", "(i) tile eff. 512² tiles"], cpu_rows))
    write_results("efficiency", results, table)


if __name__ == "__main__":
    main()
