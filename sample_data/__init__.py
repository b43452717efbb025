"""Bundled sample data (installed as ``napari_semseg.sample_data``; works from a wheel).

Files (labels: 0 = not annotated, classes 1..K):

- ``em.tif`` / ``em_labels.tif``: ISBI 2012 EM slice 29 (512x512), 1 membrane, 2 cell interior.
- ``em_train.tif`` / ``em_train_labels.tif``: ISBI 2012 EM slice 0, for the training demo.
- ``aerial.tif`` / ``aerial_labels.tif``: 1024x1024 RGB crop of the Dubai aerial set (tile 8),
  1 building, 2 land, 3 road, 4 vegetation, 5 water, 6 unlabeled.
- ``em_model.safetensors``, ``aerial_model.safetensors``: small models trained by the project on
  the training splits (see ``scripts/make_sample_models.py``).

Sources: ISBI 2012 challenge (Cardona et al. 2010; Arganda-Carreras et al. 2015, Front.
Neuroanat.); "Semantic segmentation of aerial imagery", Humans in the Loop with MBRSC. Only small
crops are shipped, with this attribution.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path


def sample_path(name: str) -> Path:
    """Path of a bundled sample file (e.g. ``"em.tif"``, ``"em_model.safetensors"``)."""
    res = files(__name__) / name
    if not res.is_file():
        available = sorted(p.name for p in files(__name__).iterdir() if not p.name.startswith("_"))
        raise FileNotFoundError(f"no sample file {name!r}; available: {available}")
    with as_file(res) as p:  # a real file for installed wheels and checkouts alike
        return Path(p)
