"""Import rules of the napari plugin code.

- No ``_napari`` module imports segmentation-models-pytorch, torchvision, timm or triton itself:
  they are loaded through ``napari_semseg.core`` (which loads triton with RTLD_DEEPBIND first; see
  ``core/_triton_guard.py`` and ``test_viewer_first.py``).
- The reader, the writer and the sample data stay light: opening a file or a sample in napari
  does not import torch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import napari_semseg

NAPARI_DIR = Path(napari_semseg.__file__).parent / "_napari"
HEAVY = ("segmentation_models_pytorch", "torchvision", "timm", "triton")


def test_plugin_modules_never_import_smp_torchvision_timm_directly(absolute_imports):
    found = absolute_imports(NAPARI_DIR)
    assert any(m.startswith("napari") for _, m in found)  # the scanner sees the plugin's imports
    offenders = [f"{f}: {m}" for f, m in found if m.split(".")[0] in HEAVY]
    assert not offenders, offenders


def test_reader_writer_and_samples_do_not_import_torch(tmp_path):
    code = (
        "import sys, numpy as np, tifffile\n"
        "from napari_semseg._napari import reader, writer, sample_data\n"
        f"p = r'{tmp_path / 'x.tif'}'\n"
        "tifffile.imwrite(p, np.zeros((64, 64), np.uint8))\n"
        "layers = reader.napari_get_reader(p)(p)\n"
        "writer.write_labels(p.replace('x.tif', 'y.tif'), np.ones((64, 64), np.uint8), {})\n"
        "sample_data.em_sample(); sample_data.em_training_sample()\n"
        "bad = [m for m in ('torch', 'segmentation_models_pytorch') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
