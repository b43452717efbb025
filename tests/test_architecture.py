"""The core never imports GUI code (checked on the source and in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import napari_semseg

CORE = Path(napari_semseg.__file__).parent / "core"
FORBIDDEN = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy")


def test_core_sources_import_no_gui_module(absolute_imports):
    found = absolute_imports(CORE)
    assert any(m == "torch" for _, m in found)  # the scanner sees the core's imports
    offenders = [f"{f}: {m}" for f, m in found if m.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders


def test_using_the_engine_loads_no_gui_module(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from napari_semseg import build_model, segment, save_model, load_model\n"
        "import napari_semseg.core.io, napari_semseg.core.predict, napari_semseg.cli\n"
        "m = build_model(encoder_depth=3, decoder_channels=(16, 8, 4))\n"
        f"save_model(m, r'{tmp_path / 'm.safetensors'}')\n"
        "segment(np.zeros((64, 64), np.uint8), m)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
