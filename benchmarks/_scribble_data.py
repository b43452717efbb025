"""Data for the scribble benchmark from ../shared/data: ISBI 2012 EM, Dubai aerial, and two sets
the generalist encoder never saw (Usiigaci phase contrast, HOT fAIr drone buildings)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


def _data_folder() -> Path:
    """``$SEMSEG_BENCH_DATA``, else ``shared/data`` next to the checkout (or next to a folder
    above it, for worktrees)."""
    if os.environ.get("SEMSEG_BENCH_DATA"):
        return Path(os.environ["SEMSEG_BENCH_DATA"])
    here = Path(__file__).resolve()
    for parent in here.parents[1:]:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    return here.parents[1].parent / "shared" / "data"


DATA = _data_folder()
EM_NAMES = ["membrane", "interior"]
AERIAL_NAMES = ["building", "land", "road", "vegetation", "water", "unlabeled"]


def em(index: int) -> tuple[np.ndarray, np.ndarray]:
    d = DATA / "isbi2012_em"
    img = np.asarray(Image.open(d / "images" / f"isbi_{index:02d}.png").convert("L"))
    m = np.asarray(Image.open(d / "masks" / f"isbi_{index:02d}.png").convert("L"))
    return img, np.where(m > 127, 2, 1).astype(np.uint8)


def aerial(tile: int, part: int) -> tuple[np.ndarray, np.ndarray]:
    d = DATA / "dubai_aerial"
    img = np.asarray(Image.open(d / "images" / f"tile{tile}_part{part:03d}.jpg").convert("RGB"))
    m = np.asarray(Image.open(d / "masks" / f"tile{tile}_part{part:03d}.png"))
    lab = m.astype(np.int16) + 1
    lab[m == 255] = 0
    return img, lab.astype(np.uint8)


USIIGACI_NAMES = ["background", "cell"]
BUILDING_NAMES = ["background", "building"]
NUCLEI_NAMES = ["background", "nucleus"]


def _rows(folder: str, split: str) -> list[dict[str, str]]:
    """The rows of a data set's meta.csv in a split (file order)."""
    import csv

    with open(DATA / folder / "meta.csv", newline="") as fh:
        return [row for row in csv.DictReader(fh) if row["split"] == split]


def _split(folder: str, split: str) -> list[str]:
    """Image ids of a split in a data set's meta.csv (file order)."""
    return [row["id"] for row in _rows(folder, split)]


def _binary(folder: str, name: str, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Image and labels (0 background -> 1, 1 -> 2, 255 no data -> 0 = not annotated)."""
    d = DATA / folder
    img = np.asarray(Image.open(d / "images" / f"{name}.png").convert(mode))
    m = np.asarray(Image.open(d / "masks" / f"{name}.png"))
    lab = m.astype(np.int16) + 1
    lab[m == 255] = 0
    return img, lab.astype(np.uint8)


def usiigaci(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A Usiigaci phase-contrast image (grey) and its labels (1 background, 2 cell)."""
    return _binary("usiigaci_phase_contrast", name, "L")


def hotosm(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A HOT fAIr drone image (RGB) and its labels (1 background, 2 building, 0 no data)."""
    return _binary("hotosm_fair_buildings", name, "RGB")


def dsb(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A DSB 2018 fluorescence image (grey) and its labels (1 background, 2 nucleus)."""
    return _binary("dsb2018_fluo_nuclei", name, "L")


def one_per_size_group(folder: str, split: str) -> list[str]:
    """The first image of each size group of a split (meta.csv order): a few images that
    cover the set's microscopes and magnifications."""
    if not (DATA / folder / "meta.csv").exists():  # no data here: the benchmark says so later
        return []
    seen: dict[str, str] = {}
    for row in _rows(folder, split):
        seen.setdefault(row["size_group"], row["id"])
    return list(seen.values())


def split_ids(folder: str, split: str) -> list[str]:
    """The ids of the suggested ``train`` or ``test`` split of a data set."""
    return _split(folder, split)
