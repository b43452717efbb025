"""Data for the scribble benchmark (ISBI 2012 EM, Dubai aerial) from ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
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
