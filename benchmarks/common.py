"""Shared helpers of the prediction benchmarks (efficiency, MONAI, memory, cluster, GPU).

Every benchmark writes ``benchmarks/results/NAME.json`` (all numbers, machine, conditions)
and ``NAME.md`` (a table). The machines these run on are shared, so each benchmark measures
what it compares *within one run*, interleaved in rounds, and reports ratios per round
(median) as well as the raw numbers; the load average before and after is recorded.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPO = HERE.parent
SHARED_DATA = REPO.parent / "shared" / "data"
CACHE = Path(os.environ.get("NAPARI_SEMSEG_BENCH_CACHE",
                            Path.home() / ".cache" / "napari-semseg-bench"))


# ------------------------------------------------------------------------------------------
# reporting


def machine() -> dict[str, Any]:
    """Where a benchmark ran: CPU, cores, torch, GPU, load average."""
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "python": platform.python_version(), "load_average": os.getloadavg(),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_results(name: str, data: dict[str, Any], table: str) -> None:
    """Write ``results/NAME.json`` and ``results/NAME.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {**data, "load_average_end": os.getloadavg()}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(table.rstrip() + "\n")
    print(table)


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


# ------------------------------------------------------------------------------------------
# memory


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB.

    Reads ``VmHWM`` (the high-water mark of this process's own address space): ``ru_maxrss``
    would also count the parent's resident memory at fork time on Linux.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run_child(script: Path, args: list[str], env: dict[str, str] | None = None,
              timeout: float = 3600) -> dict[str, Any]:
    """Run ``python script --child ARGS`` in a fresh process; it prints one JSON line last."""
    proc = subprocess.run([sys.executable, str(script), "--child", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------
# models and images


def unet_resnet(encoder: str = "resnet18", seed: int = 0) -> Any:
    """Unet with the given encoder, 1 channel, 2 classes, fixed normalization (random weights:
    speed and memory do not depend on the weights)."""
    import torch

    from napari_semseg import build_model
    from napari_semseg.core.normalize import Normalization

    torch.manual_seed(seed)
    return build_model("unet", encoder, 1, 2,
                       normalization=Normalization("meanstd", [127.0], [1 / 60.0]))


def synthetic_zarr(path: Path, shape: tuple[int, int], chunk: int = 1024, seed: int = 0) -> Path:
    """A uint8 OME-less zarr (format 2) of ``shape`` with smooth structure plus noise, written
    band by band (never held whole in memory). Reused if it exists with that shape."""
    import zarr

    if path.exists():
        try:
            z = zarr.open_array(str(path), mode="r")
            if tuple(z.shape) == tuple(shape):
                return path
        except Exception:
            pass
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    z = zarr.open_array(str(path), mode="w", shape=shape, chunks=(chunk, chunk), dtype=np.uint8,
                        zarr_format=2)
    rng = np.random.default_rng(seed)
    yy = np.arange(chunk)[:, None]
    for y in range(0, shape[0], chunk):
        h = min(chunk, shape[0] - y)
        xx = np.arange(shape[1])[None, :]
        base = 127 + 60 * np.sin((yy[:h] + y) / 37.0) * np.cos(xx / 53.0)
        band = base + rng.normal(0, 25, (h, shape[1]))
        z[y:y + h] = np.clip(band, 0, 255).astype(np.uint8)
    return path


def em_mosaic(shape: tuple[int, int]) -> np.ndarray:
    """A real EM image of ``shape``: ISBI 2012 slices (../shared/data) tiled 4 x 4, or mirrored
    copies of the bundled sample when the data set is absent."""
    from PIL import Image

    folder = SHARED_DATA / "isbi2012_em" / "images"
    files = sorted(folder.glob("*"))[14:30] if folder.exists() else []
    if len(files) >= 16:
        ims = [np.asarray(Image.open(f)) for f in files]
        mosaic = np.block([[ims[4 * r + c] for c in range(4)] for r in range(4)])
    else:
        import tifffile

        from napari_semseg.sample_data import sample_path

        em = tifffile.imread(sample_path("em.tif"))
        row = np.concatenate([em, em[:, ::-1]] * 2, axis=1)
        mosaic = np.concatenate([row, row[::-1]] * 2, axis=0)
    reps = (-(-shape[0] // mosaic.shape[0]), -(-shape[1] // mosaic.shape[1]))
    return np.tile(mosaic, reps)[:shape[0], :shape[1]].copy()


def trained_em_resnet18(steps: int = 150, seed: int = 0) -> Path:
    """A Unet-resnet18 trained on ISBI EM slices 0-9 for ``steps`` AdamW steps (cached).

    Seam and agreement measurements need a trained network (a random one has no meaningful
    decision boundaries). Needs ../shared/data; ~3-6 minutes on 2 CPU cores, once.
    """
    import torch
    from PIL import Image

    from napari_semseg import build_model, save_model
    from napari_semseg.core.normalize import Normalization

    path = CACHE / f"em_unet_resnet18_{steps}_{seed}.safetensors"
    if path.exists():
        return path
    folder = SHARED_DATA / "isbi2012_em"
    if not folder.exists():
        raise SystemExit(f"{folder} is needed to train the benchmark model")
    images = sorted((folder / "images").glob("*"))[:10]
    masks = sorted((folder / "masks").glob("*"))[:10]
    x = np.stack([np.asarray(Image.open(f)) for f in images]).astype(np.float32)
    y = (np.stack([np.asarray(Image.open(f)) for f in masks]) > 127).astype(np.int64)
    lo, hi = np.percentile(x, [1, 99.8])
    norm = Normalization("percentile", [float(lo)], [float(1 / (hi - lo))], None)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model("unet", "resnet18", 1, 2, normalization=norm,
                        class_names=["membrane", "interior"])
    opt = torch.optim.AdamW(model.parameters(), 2e-3)
    model.train()
    for step in range(steps):
        idx = rng.integers(0, len(x), 8)
        ys, xs = rng.integers(0, 512 - 256, 8), rng.integers(0, 512 - 256, 8)
        windows = list(zip(idx, ys, xs, strict=True))
        xb = np.stack([x[i, a:a + 256, b:b + 256] for i, a, b in windows])[:, None]
        yb = np.stack([y[i, a:a + 256, b:b + 256] for i, a, b in windows])
        if step % 2:
            xb, yb = xb[..., ::-1], yb[..., ::-1]
        loss = torch.nn.functional.cross_entropy(
            model(norm.apply_torch(torch.from_numpy(xb.copy()))), torch.from_numpy(yb.copy()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    CACHE.mkdir(parents=True, exist_ok=True)
    return save_model(model, path)


# ------------------------------------------------------------------------------------------
# timing


def engine_model(model: Any) -> Any:
    """A copy of ``model`` prepared as the prediction engine runs it on the CPU
    (channels_last; see :class:`napari_semseg.core.predict.TilePredictor`)."""
    import torch

    return copy.deepcopy(model).to(memory_format=torch.channels_last).eval()


def raw_forward_seconds(model: Any, size: int, n: int, *, channels_last: bool = False,
                        heap_reuse: bool = False, batch: int = 1, bf16: bool = False,
                        cpu_times: list[float] | None = None) -> list[float]:
    """Seconds per forward pass (plus softmax) of ``batch`` tiles of ``size``² in a tight loop
    (one untimed warm-up pass first), in fp32 or under bf16 autocast. ``cpu_times`` receives
    the process CPU seconds of each pass (all threads), a measure that other jobs on a shared
    machine disturb much less."""
    import contextlib

    import torch

    from napari_semseg.core.memory import reuse_freed_memory

    x = torch.randn(batch, model.metadata.in_channels, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    ctx = reuse_freed_memory() if heap_reuse else contextlib.nullcontext()
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with ctx, torch.inference_mode(), amp:
        model(x).float().softmax(1)
        for _ in range(n):
            c, t = time.process_time(), time.perf_counter()
            model(x).float().softmax(1)
            times.append(time.perf_counter() - t)
            if cpu_times is not None:
                cpu_times.append(time.process_time() - c)
    return times


def timed(fn: Callable[[], Any], cpu: list[float] | None = None) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` (and its process CPU seconds appended to ``cpu``)."""
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    if cpu is not None:
        cpu.append(time.process_time() - c)
    return time.perf_counter() - t, out


def previous_sets(output: str | Path, merge: bool) -> dict:
    """The ``sets`` already in ``output``'s JSON when ``merge`` (runs of one data set at a time
    add to each other), else an empty dict."""
    previous = Path(output).with_suffix(".json")
    return json.loads(previous.read_text())["sets"] if merge and previous.exists() else {}
