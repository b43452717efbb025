"""Training progress on a busy CPU: optimizer steps per second with and without a competing
busy process, for three ways of choosing torch's thread count (the Train widget's setting: a
time budget only, the small mobilenet_v2 U-Net, the bundled EM strokes).

* ``fixed``: torch's default thread count all along (``threads`` set to it; no tuning);
* ``before``: the earlier tuner (starts at torch's count, probes 1 thread, no reaction to a
  jump in step time);
* ``after``: starts from the cores actually free (CPUs minus load average) and probes again
  when the step time jumps.

Conditions are interleaved in rounds (seeds) on the same machine; the competitor is a second
process running 2-thread matrix products. Also recorded: wall time of each run against its
budget (the budget should hold within 10 %).

    python benchmarks/bench_threads_load.py [budget_s] [rounds]

Writes results/threads_load.{json,md}.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, md_table, median, write_results  # noqa: E402

BUSY = ("import torch, time\ntorch.set_num_threads(2)\na = torch.randn(700, 700)\n"
        "end = time.time() + 900\nwhile time.time() < end:\n    a @ a\n")
MODES = ("fixed", "before", "after")


def one_run(mode: str, budget: float, seed: int) -> dict:
    import os

    import torch

    from napari_semseg._napari.sample_data import em_training_sample
    from napari_semseg.core import threads
    from napari_semseg.core.train import iter_train

    torch.set_num_threads(os.cpu_count() or 2)
    (image, *_), (strokes, *_) = em_training_sample()
    saved = threads.free_cores, threads.JUMP
    if mode == "before":
        threads.free_cores, threads.JUMP = (lambda: 10**6), math.inf
    settings = dict(encoder="mobilenet_v2", encoder_depth=4, decoder_channels="64,32,16,16",
                    steps_per_epoch=20, time_budget=budget, seed=seed, device="cpu",
                    threads=torch.get_num_threads() if mode == "fixed" else None)
    steps, first_loss = 0, None
    t0 = time.perf_counter()
    try:
        gen = iter_train(image, strokes, **settings)
        try:
            while True:
                event = next(gen)
                if not event.epoch_end:
                    steps = max(steps, int(event.step))
                    if first_loss is None:
                        first_loss = event.loss
        except StopIteration as stop:
            model = stop.value
    finally:
        threads.free_cores, threads.JUMP = saved
        torch.set_num_threads(os.cpu_count() or 2)
    wall = time.perf_counter() - t0
    record = model.metadata.training or {}
    return {"mode": mode, "seed": seed, "steps": steps, "wall_s": round(wall, 2),
            "train_s": record.get("time_s"), "steps_per_s": round(steps / wall, 3),
            "budget_ratio": round(wall / budget, 3), "threads": record.get("cpu_threads"),
            "first_loss_finite": first_loss is None or math.isfinite(first_loss),
            "best_mean_iou": (record.get("best_metrics") or {}).get("mean_iou")}


def main() -> None:
    import os

    budget = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    runs = []
    for seed in range(rounds):
        for load in ("as found", "+busy process"):
            busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load != "as found" else None
            try:
                if busy is not None:
                    time.sleep(2.0)
                for mode in MODES:
                    r = one_run(mode, budget, seed)
                    r.update(load=load, load_avg=round(os.getloadavg()[0], 2))
                    print(r, flush=True)
                    runs.append(r)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    rows = []
    for load in ("as found", "+busy process"):
        for mode in MODES:
            sel = [r for r in runs if r["load"] == load and r["mode"] == mode]
            rows.append([load, mode, median([r["steps_per_s"] for r in sel]),
                         median([r["budget_ratio"] for r in sel]),
                         max(r["budget_ratio"] for r in sel),
                         median([r["load_avg"] for r in sel]), sel[-1]["threads"]])
    ratios = {}
    for load in ("as found", "+busy process"):
        per_seed = []
        for seed in range(rounds):
            by = {r["mode"]: r for r in runs if r["load"] == load and r["seed"] == seed}
            if by["before"]["steps_per_s"]:
                per_seed.append(by["after"]["steps_per_s"] / by["before"]["steps_per_s"])
        ratios[load] = round(median(per_seed), 3) if per_seed else None
    table = "\n".join([
        "# Training progress under CPU load (threads chosen from free cores, re-tuned on jumps)",
        "", f"Budget {budget:.0f} s per run, {rounds} rounds (seeds), conditions interleaved; "
        "the competitor is a second process doing 2-thread matrix products. Steps/s = optimizer "
        "steps / wall time of the whole run (data preparation and final validation included). "
        "Machine load average is that of a shared machine (other jobs were running).", "",
        md_table(["load", "threads", "steps/s (median)", "wall/budget (median)",
                  "wall/budget (max)", "load avg", "threads at the end (last run)"], rows), "",
        "after/before steps/s per round (median): " +
        ", ".join(f"{k}: {v}" for k, v in ratios.items()), ""])
    write_results("threads_load", {"machine": machine(), "budget_s": budget, "rounds": rounds,
                                   "runs": runs, "after_over_before": ratios}, table)


if __name__ == "__main__":
    main()
