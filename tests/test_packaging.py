"""Packaging: the wheel ships the manifest and the sample data, which load from an install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("src")
    # build from a copy so that no build/ or egg-info litter lands in the checkout
    shutil.copytree(ROOT, build / "repo", ignore=shutil.ignore_patterns(
        ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        "benchmarks", "tests", "docs"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(build / "repo")], check=True)
    return next(out.glob("napari_semseg-*.whl"))


def test_wheel_contains_manifest_and_samples(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "napari_semseg/napari.yaml" in names
    assert "napari_semseg/py.typed" in names  # type hints are part of the API
    for sample in ("em.tif", "em_labels.tif", "aerial.tif", "aerial_labels.tif"):
        assert f"napari_semseg/sample_data/{sample}" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "napari-semseg = napari_semseg.cli:main" in text
    assert "napari_semseg:napari.yaml" in text


def test_sample_data_loads_from_the_installed_wheel(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True)
    code = ("import napari_semseg.sample_data as s, tifffile\n"
            "p = s.sample_path('em.tif'); print(p)\n"
            "assert tifffile.imread(p).shape == (512, 512)\n")
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert str(target) in proc.stdout


def test_manifest_validates_with_npe2():
    npe2 = Path(sys.executable).with_name("npe2")
    proc = subprocess.run([str(npe2), "validate", "--imports", "napari-semseg"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
