"""Shared test fixtures: small images and tiny models, generated here (no external data)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# napari/vispy must render into a real (Xvfb) display: offscreen Qt gives black canvases.
if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
    del os.environ["QT_QPA_PLATFORM"]

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests without CUDA and ``slow`` data tests without ../shared/data."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture
def shared_data() -> Path:
    """The real data sets (../shared/data); tests using it are skipped where it is absent."""
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not available on this machine")
    return SHARED_DATA


@pytest.fixture
def tiny_model():
    """A small randomly initialised 1-channel, 3-class Unet (fast on CPU)."""
    import torch

    from napari_semseg import build_model

    torch.manual_seed(0)
    return build_model("unet", "resnet18", in_channels=1, classes=3, encoder_depth=3,
                       decoder_channels=(32, 16, 8), tile=128, halo=16)


@pytest.fixture
def grey_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((150, 170)) * 255).astype(np.uint8)


def _absolute_imports(folder: Path) -> list[tuple[str, str]]:
    """``(file name, module)`` of every absolute import statement in the sources of ``folder``."""
    import ast

    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found += [(path.name, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((path.name, node.module))
    return found


@pytest.fixture
def absolute_imports():
    """The import scanner used by the architecture tests (a fixture: tests import no helpers)."""
    return _absolute_imports
