"""Peer comparison with MONAI ``sliding_window_inference`` (issue 2, item 11b).

Same model (Unet-resnet18 trained briefly on ISBI 2012 EM, so that label agreement means
something), same in-memory image (a 3072² mosaic of real EM slices), CPU. Each method first runs
once in a fresh process (peak RSS, labels for the agreement); then one process times the tiled
methods in interleaved rounds (the machine is shared: ratios are taken within each round):

- ``whole``: one forward pass over the whole image (the reference for label agreement);
- ``ours (same)``: :func:`segment` with MONAI's tile, overlap and batch (512, 128, 1);
- ``monai``: ``sliding_window_inference(roi 512, sw_batch_size 1, overlap 0.25,
  mode="gaussian")`` on the model as built (NCHW), softmax predictor;
- ``monai (engine cfg)``: the same with the model converted as our engine runs it on the CPU
  (channels_last, freed activations reused), to separate the tiling strategy from model tuning;
- ``monai (bf16)``: the engine-configured model under bf16 autocast, as our engine runs it on
  CPUs with native bf16 (separates the tiling strategy from the precision);
- ``ours (default)``: :func:`segment` with its seam-free defaults (tile 1216, overlap 192;
  bf16 on CPUs with native bf16);
- ``ours (default, fp32)``: the same with ``amp=False``.

Ratios: (i) ours (same) vs monai; (ii) ours (default) vs monai (target >= 1.6x).

Seams (``--seams``): ours with several tile / overlap settings against the whole-image pass:
label agreement and differences of the uint8 probabilities.

Usage::

    python benchmarks/bench_monai.py [--size 3072]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (CACHE, em_mosaic, engine_model, machine, md_table, peak_rss_mib,  # noqa: E402
                    rss_mib, run_child, trained_em_resnet18, write_results)

METHODS = ["whole", "ours_same", "monai", "monai_engine", "monai_bf16", "ours_default",
           "ours_default_fp32"]
SEAMS = ["1088/64", "1152/128", "1216/192", "1280/256", "576/192", "512/128"]
TITLES = {"whole": "whole-image pass", "ours_same": "ours (512 / 128 / batch 1)",
          "monai": "MONAI (512 / 0.25 / batch 1, gaussian)",
          "monai_engine": "MONAI, engine cfg model",
          "monai_bf16": "MONAI, engine cfg model + bf16 autocast",
          "ours_default": "ours (defaults: 1216 / 192, bf16 where native)",
          "ours_default_fp32": "ours (defaults, fp32: amp=False)"}


def timing_child(size: int, model_path: str, rounds: int) -> dict:
    """Seconds of each tiled method, interleaved in ``rounds`` rounds in this process."""
    import torch

    from napari_semseg import segment
    from napari_semseg.core.memory import reuse_freed_memory
    from napari_semseg.core.models import load_model

    model = load_model(model_path)
    fast = engine_model(model)
    image = em_mosaic((size, size))
    norm = model.metadata.normalization

    def monai(net, engine: bool, bf16: bool = False) -> None:
        from monai.inferers import sliding_window_inference

        with (reuse_freed_memory() if engine else _null()), torch.inference_mode(), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            x = norm.apply_torch(torch.from_numpy(image)[None, None])
            if engine:
                x = x.contiguous(memory_format=torch.channels_last)
            probs = sliding_window_inference(x, (512, 512), 1, lambda t: net(t).float().softmax(1),
                                             overlap=0.25, mode="gaussian")
            (probs[0].argmax(0) + 1).to(torch.uint8)

    methods = {
        "ours_same": lambda: segment(image, fast, device="cpu", tile=512, overlap=128,
                                     batch_size=1),
        "monai": lambda: monai(model, False),
        "monai_engine": lambda: monai(fast, True),
        "monai_bf16": lambda: monai(fast, True, True),
        "ours_default": lambda: segment(image, fast, device="cpu"),
        "ours_default_fp32": lambda: segment(image, fast, device="cpu", amp=False),
    }
    out: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(rounds):
        for name, fn in (methods.items() if r % 2 == 0 else reversed(methods.items())):
            t0 = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t0)
        print(json.dumps({k: v[-1] for k, v in out.items()}), file=sys.stderr, flush=True)
    return out


def child(method: str, size: int, model_path: str) -> dict:
    import torch

    from napari_semseg import segment
    from napari_semseg.core.memory import reuse_freed_memory
    from napari_semseg.core.models import load_model

    model = load_model(model_path)
    image = em_mosaic((size, size))
    base = rss_mib()
    norm = model.metadata.normalization
    t0 = time.perf_counter()
    if method in ("whole", "monai", "monai_engine", "monai_bf16"):
        engine = method in ("monai_engine", "monai_bf16")
        net = engine_model(model) if engine else model
        with (reuse_freed_memory() if engine else _null()), torch.inference_mode(), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=method == "monai_bf16"):
            x = norm.apply_torch(torch.from_numpy(image)[None, None])
            if engine:
                x = x.contiguous(memory_format=torch.channels_last)
            if method == "whole":
                probs = net(x).softmax(1)
            else:
                from monai.inferers import sliding_window_inference

                probs = sliding_window_inference(x, (512, 512), 1,
                                                 lambda t: net(t).float().softmax(1),
                                                 overlap=0.25, mode="gaussian")
            labels = (probs[0].argmax(0) + 1).to(torch.uint8).numpy()
            if method == "whole":
                np.save(CACHE / "monai_whole_probs.npy",
                        (probs[0] * 255).round().clamp(0, 255).to(torch.uint8).numpy())
    elif method == "ours_same":
        labels = segment(image, model, device="cpu", tile=512, overlap=128, batch_size=1).labels
    elif method.startswith("seam"):
        tile, overlap = (int(v) for v in method[4:].split("/"))
        res = segment(image, model, device="cpu", tile=tile, overlap=overlap,
                      probabilities=True)
        labels = res.labels
        np.save(CACHE / "monai_seam_probs.npy", res.probabilities)
    elif method == "ours_default_fp32":
        labels = segment(image, model, device="cpu", amp=False).labels
    else:
        labels = segment(image, model, device="cpu").labels
    seconds = time.perf_counter() - t0
    np.save(CACHE / f"monai_{method.replace('/', '_')}.npy", labels)
    return {"method": method, "seconds": seconds, "mpx_s": size * size / 1e6 / seconds,
            "peak_rss_mib": peak_rss_mib(), "rss_before_mib": base}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=3072)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seams", default=",".join(SEAMS),
                        help="tile/overlap settings compared with the whole-image pass ('' for "
                             "none)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method")
    parser.add_argument("--model")
    args = parser.parse_args()
    if args.child:
        if args.method == "timing":
            print(json.dumps(timing_child(args.size, args.model, args.rounds)))
        else:
            print(json.dumps(child(args.method, args.size, args.model)))
        return
    model_path = str(trained_em_resnet18())
    runs = {}
    for method in args.methods.split(","):
        print(f"{method} ...", file=sys.stderr, flush=True)
        runs[method] = run_child(Path(__file__), ["--method", method, "--size", str(args.size),
                                                  "--model", model_path])
        print(runs[method], file=sys.stderr, flush=True)
    timing = {}
    if args.rounds > 0:
        print("timing rounds ...", file=sys.stderr, flush=True)
        timing = run_child(Path(__file__), ["--method", "timing", "--size", str(args.size),
                                            "--model", model_path, "--rounds",
                                            str(args.rounds)])
        for method, times in timing.items():
            if method in runs:
                runs[method]["seconds_single_run"] = runs[method]["seconds"]
                runs[method]["seconds"] = float(np.median(times))
                runs[method]["mpx_s"] = args.size ** 2 / 1e6 / runs[method]["seconds"]
                runs[method]["seconds_rounds"] = times
    ref = np.load(CACHE / "monai_whole.npy")
    for method, run in runs.items():
        run["label_agreement_with_whole"] = float((np.load(CACHE / f"monai_{method}.npy")
                                                   == ref).mean())
    seams = {}
    whole_probs = np.load(CACHE / "monai_whole_probs.npy").astype(np.int16)
    for setting in [s for s in args.seams.split(",") if s]:
        print(f"seams {setting} ...", file=sys.stderr, flush=True)
        run = run_child(Path(__file__), ["--method", f"seam{setting}", "--size",
                                         str(args.size), "--model", model_path])
        labels = np.load(CACHE / f"monai_seam{setting.replace('/', '_')}.npy")
        diff = np.abs(np.load(CACHE / "monai_seam_probs.npy").astype(np.int16) - whole_probs)
        tile, overlap = (int(v) for v in setting.split("/"))
        seams[setting] = {"tile": tile, "overlap": overlap, "margin": overlap // 4,
                          "label_agreement": float((labels == ref).mean()),
                          "prob_diff_mean": float(diff.mean()),
                          "prob_diff_p999": float(np.percentile(diff, 99.9)),
                          "prob_diff_max": int(diff.max()), "seconds": run["seconds"]}
        print(seams[setting], file=sys.stderr, flush=True)
    ratios = {}
    pairs = {"(i) same settings: monai time / ours time": ("monai", "ours_same"),
             "(i) same settings, monai with engine cfg model: monai / ours":
                 ("monai_engine", "ours_same"),
             "(ii) defaults: monai time / ours time": ("monai", "ours_default"),
             "(ii) defaults, monai with engine cfg model: monai / ours":
                 ("monai_engine", "ours_default"),
             "(ii) defaults, both in bf16 (monai engine cfg + autocast): monai / ours":
                 ("monai_bf16", "ours_default"),
             "(ii) defaults, both in fp32: monai time / ours (amp=False) time":
                 ("monai", "ours_default_fp32")}
    for label, (a, b) in pairs.items():
        if a in timing and b in timing:  # median of the per-round ratios
            ratios[label] = float(np.median([x / y for x, y in
                                             zip(timing[a], timing[b], strict=False)]))
        elif a in runs and b in runs:
            ratios[label] = runs[a]["seconds"] / runs[b]["seconds"]
    rows = [[TITLES[m], r["seconds"], r["mpx_s"], f"{r['label_agreement_with_whole'] * 100:.3f}",
             r["peak_rss_mib"], r["peak_rss_mib"] - r["rss_before_mib"]]
            for m, r in runs.items()]
    info = machine()
    table = (f"Unet-resnet18 (trained on ISBI EM), {args.size}² in-memory EM mosaic, CPU "
             f"({info['cpu']}, {info['cores']} cores), load average at start "
             f"{info['load_average'][0]:.1f}; peak RSS and labels from one run of each method in "
             f"a fresh process; seconds: median of {args.rounds} interleaved rounds in one "
             "process (the whole-image pass: its single run); ratios: median of per-round "
             "ratios.\n\n"
             + md_table(["method", "seconds", "image Mpx/s", "label agreement with whole %",
                         "peak RSS MiB", "peak RSS above start MiB"], rows)
             + "\n\n" + md_table(["ratio", "value"], [[k, v] for k, v in ratios.items()]))
    write_results("monai", {"machine": info, "size": args.size, "runs": runs,
                            "ratios": ratios, "timing_rounds": timing}, table)
    if seams:
        write_seams(seams, info, args.size)


def write_seams(seams: dict, info: dict, size: int) -> None:
    """``results/seams.*``: tiled against whole-image labels and probabilities."""
    table = (f"Seams: ours tiled against one whole-image pass, Unet-resnet18 trained on ISBI EM, "
             f"{size}² EM mosaic (CPU, {info['cores']} cores); probability differences in "
             "1/255 of the uint8 class probabilities; margin = zero-weight part of the band.\n\n"
             + md_table(["tile / overlap (margin)", "label agreement %", "mean prob. diff",
                         "99.9th pct", "max"],
                        [[f"{v['tile']} / {v['overlap']} ({v['margin']})",
                          f"{v['label_agreement'] * 100:.3f}", v["prob_diff_mean"],
                          v["prob_diff_p999"], v["prob_diff_max"]] for v in seams.values()]))
    write_results("seams", {"machine": info, "size": size, "seams": seams}, table)


if __name__ == "__main__":
    main()
