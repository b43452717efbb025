"""Build the bundled sample data from ../shared/data (run once by the developers).

- EM (ISBI 2012, Cardona et al. 2010; Arganda-Carreras et al. 2015): slice 29 (a held-out slice of
  the 0-19 / 20-29 split) to segment, with its ground truth; slice 0 (training split) with its
  ground truth for the training demo.
- Aerial (Dubai, MBRSC / Humans in the Loop): a 1024x1024 crop of tile 8, part 3 (tile 8 is held
  out from model training), with its ground truth.

Labels follow napari's convention: 0 = not annotated, classes 1..K.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "sample_data"


def em_labels(mask: np.ndarray) -> np.ndarray:
    return np.where(mask > 127, 2, 1).astype(np.uint8)  # 1 membrane, 2 interior


def aerial_labels(mask: np.ndarray) -> np.ndarray:
    out = mask.astype(np.int16) + 1
    out[mask == 255] = 0
    return out.astype(np.uint8)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    em = DATA / "isbi2012_em"
    for idx, name in ((29, "em"), (0, "em_train")):
        img = np.asarray(Image.open(em / "images" / f"isbi_{idx:02d}.png").convert("L"))
        gt = em_labels(np.asarray(Image.open(em / "masks" / f"isbi_{idx:02d}.png").convert("L")))
        tifffile.imwrite(OUT / f"{name}.tif", img, compression="zlib")
        tifffile.imwrite(OUT / f"{name}_labels.tif", gt, compression="zlib")
    aer = DATA / "dubai_aerial"
    img = np.asarray(Image.open(aer / "images" / "tile8_part003.jpg").convert("RGB"))
    gt = aerial_labels(np.asarray(Image.open(aer / "masks" / "tile8_part003.png")))
    y, x = 200, 600
    tifffile.imwrite(OUT / "aerial.tif", img[y:y + 1024, x:x + 1024], photometric="rgb",
                     compression="zlib")
    tifffile.imwrite(OUT / "aerial_labels.tif", gt[y:y + 1024, x:x + 1024], compression="zlib")
    names = json.loads((aer / "classes.json").read_text())["classes"]
    print("aerial classes:", [names[str(k)] for k in range(6)])


if __name__ == "__main__":
    main()
