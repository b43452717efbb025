"""Fixtures for the napari plugin tests (pytest-qt + napari's make_napari_viewer under Xvfb).

Users open napari first and load the plugin second; the fixtures follow that order: a test asks
for ``viewer`` (created here) and only then imports or docks the plugin. Nothing in this file
imports torch or the plugin at import time.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

# vispy needs a real (Xvfb) display; offscreen Qt gives black canvases and crashes.
os.environ.pop("QT_QPA_PLATFORM", None)

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
HEARTBEAT_MS = 10
# The 200 ms responsiveness target is a benchmark (benchmarks/results/gui_responsiveness.md,
# written with SEMSEG_WRITE_RESULTS=1); the test suite only guards against a freeze of seconds.
TARGET_GAP_MS = 200.0
FREEZE_MS = float(os.environ.get("SEMSEG_FREEZE_MS", "5000"))


@pytest.fixture
def viewer(make_napari_viewer):
    """A shown napari viewer (real canvas under Xvfb)."""
    return make_napari_viewer(show=True)


def dock(viewer, name: str):
    """Open a widget of the plugin from its manifest, as the Plugins menu does."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-semseg", name)
    return widget


@pytest.fixture
def notifications():
    """Notifications dispatched during the test (napari's notification manager records)."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)

    class Recorder:
        @property
        def all(self):
            return notification_manager.records[start:]

        def errors(self):
            from napari.utils.notifications import NotificationSeverity

            return [n for n in self.all if n.severity == NotificationSeverity.ERROR]

        def assert_one_clear_error(self, *fragments: str) -> str:
            """Exactly one error notification, a single line containing ``fragments``, and no
            exception notification (which would offer a traceback)."""
            from napari.utils.notifications import ErrorNotification

            errors = self.errors()
            assert not any(isinstance(n, ErrorNotification) for n in self.all), \
                [str(n.message) for n in self.all]
            assert len(errors) == 1, [str(n.message) for n in errors]
            text = str(errors[0].message)
            assert "\n" not in text and "Traceback" not in text, text
            for f in fragments:
                assert f.lower() in text.lower(), text
            return text

    return Recorder()


class Heartbeat:
    """A QTimer ticking every ``HEARTBEAT_MS`` on the main thread; records the gaps between
    ticks. A frozen viewer shows up as a long gap.

    ``hb.click(widget.run)`` calls a button handler as a click would; the time the handler
    itself takes (napari creating the result layer, for instance) is reported as the click
    latency, and the gaps from then on as the responsiveness while the job runs.
    """

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.gc_ms: list[float] = []  # garbage collections during the measurement (any thread)
        self._gc_start = 0.0
        self.click_ms = 0.0
        self.job_from: float | None = None
        self.timer = QTimer()
        self.timer.setInterval(HEARTBEAT_MS)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def __enter__(self) -> Heartbeat:
        import gc

        # start from a collected heap, as a user session does after the plugin loaded (see
        # napari_semseg._napari._backend): earlier tests leave garbage whose full collection
        # would otherwise land inside the measurement
        gc.collect()
        gc.callbacks.append(self._on_gc)
        self.load = [os.getloadavg()[0]]
        self.ticks.append(time.perf_counter())
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        import gc

        self.timer.stop()
        gc.callbacks.remove(self._on_gc)
        self.load.append(os.getloadavg()[0])

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_ms.append((time.perf_counter() - self._gc_start) * 1000)

    def click(self, handler):
        """Call ``handler`` as a button click does; the job window starts when it returns."""
        t = time.perf_counter()
        result = handler()
        self.job_from = time.perf_counter()
        self.click_ms = (self.job_from - t) * 1000
        return result

    @property
    def gaps_ms(self) -> np.ndarray:
        """Gaps while the job runs (after the click handler returned)."""
        ticks = np.asarray(self.ticks)
        if self.job_from is not None:
            ticks = np.concatenate([[self.job_from], ticks[ticks > self.job_from]])
        return np.diff(ticks) * 1000

    def summary(self) -> dict[str, float]:
        g = self.gaps_ms
        whole = np.diff(np.asarray(self.ticks)) * 1000
        return {"ticks": int(len(g)), "max_gap_ms": round(float(g.max()), 1),
                "click_handler_ms": round(self.click_ms, 1),
                "max_gap_with_click_ms": round(float(whole.max()), 1),
                "p99_gap_ms": round(float(np.percentile(g, 99)), 1),
                "median_gap_ms": round(float(np.median(g)), 1),
                "gaps_over_100ms": int((g > 100).sum()),
                "longest_gc_ms": round(max(self.gc_ms, default=0.0), 1),
                "duration_s": round(float(self.ticks[-1] - self.ticks[0]), 2),
                "load_avg_1min": round(max(self.load), 2)}


@pytest.fixture
def heartbeat():
    return Heartbeat


def wait_until(condition, timeout: float = 60.0) -> None:
    """Process Qt events until ``condition()`` is true (fails after ``timeout`` seconds)."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        QApplication.processEvents()
        time.sleep(0.005)


def record_responsiveness(name: str, summary: dict) -> None:
    """Add a heartbeat measurement to benchmarks/results/gui_responsiveness.{json,md}
    (only when SEMSEG_WRITE_RESULTS=1, so that ordinary test runs leave the checkout clean)."""
    if os.environ.get("SEMSEG_WRITE_RESULTS") != "1":
        return
    import platform

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "gui_responsiveness.json"
    data = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    data["runs"][name] = {**summary, "heartbeat_interval_ms": HEARTBEAT_MS}
    data["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "display": "Xvfb (Mesa llvmpipe)"}
    data["threshold_ms"] = TARGET_GAP_MS
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    rows = ["| job | duration (s) | ticks | median gap (ms) | p99 gap (ms) | gaps > 100 ms | "
            "**max gap while the job runs (ms)** | click handler (ms) | load avg (1 min) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for job, r in sorted(data["runs"].items()):
        rows.append(f"| {job} | {r['duration_s']} | {r['ticks']} | {r['median_gap_ms']} | "
                    f"{r['p99_gap_ms']} | {r.get('gaps_over_100ms', '')} | "
                    f"**{r['max_gap_ms']}** | {r.get('click_handler_ms', '')} | "
                    f"{r.get('load_avg_1min', '')} |")
    md = ["# GUI responsiveness (napari viewer under Xvfb)", "",
          f"A QTimer ticks every {HEARTBEAT_MS} ms on the main thread while the job runs in a "
          "napari thread worker; a gap between ticks is time the viewer could not react. "
          f"Target: max gap < {TARGET_GAP_MS:.0f} ms while the job runs. The click handler "
          "(creating the result layer, which is napari's own work on the main thread) is timed "
          f"separately. Machine: {os.cpu_count()} CPU cores shared with other jobs (load average "
          "in the last column), no GPU, software OpenGL (Xvfb, Mesa llvmpipe).", "",
          "Reproduce: `SEMSEG_WRITE_RESULTS=1 pytest tests/napari -k "
          "'em_sample or aerial_sample or beats'`", "",
          *rows, ""]
    (RESULTS / "gui_responsiveness.md").write_text("\n".join(md))


def check_responsive(name: str, summary: dict) -> None:
    """Record a heartbeat measurement and fail only on a freeze (a gap of seconds).

    The 200 ms target is measured, not asserted: noise on a shared 2-core machine can cross any
    millisecond threshold, so it lives in the benchmark results (see ``record_responsiveness``).
    """
    record_responsiveness(name, summary)
    assert summary["click_handler_ms"] < FREEZE_MS, f"{name}: a click froze the viewer: {summary}"
    assert summary["max_gap_ms"] < FREEZE_MS, f"{name}: the viewer froze: {summary}"


@pytest.fixture
def tiny_model_file(tmp_path):
    """A small random 1-channel, 2-class model file (membrane/interior names)."""
    import torch

    from napari_semseg import build_model, save_model

    torch.manual_seed(0)
    model = build_model("unet", "resnet18", in_channels=1, classes=2, encoder_depth=3,
                        decoder_channels=(32, 16, 8), tile=256, halo=16,
                        class_names=["membrane", "interior"])
    return save_model(model, tmp_path / "tiny.safetensors")


def sample(name: str) -> Path:
    from napari_semseg.sample_data import sample_path

    return sample_path(name)


def coloured_fraction(shot: np.ndarray) -> float:
    """Fraction of screenshot pixels with a clearly non-grey colour (labels over a grey EM)."""
    rgb = shot[..., :3].astype(np.int16)
    return float(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 40).mean())


class Helpers:
    """Helper functions for the tests (a fixture, since test modules cannot import conftest)."""

    dock = staticmethod(dock)
    wait_until = staticmethod(wait_until)
    record_responsiveness = staticmethod(record_responsiveness)
    check_responsive = staticmethod(check_responsive)
    sample = staticmethod(sample)
    coloured_fraction = staticmethod(coloured_fraction)
    Heartbeat = Heartbeat
    FREEZE_MS = FREEZE_MS


@pytest.fixture
def h():
    return Helpers
