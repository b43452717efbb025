"""``napari-semseg info``: print a model file's metadata."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print the metadata of a model file")
    p.add_argument("model", help="model file (.safetensors)")
    p.add_argument("--json", action="store_true", help="print the raw JSON metadata")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from napari_semseg.core.models import read_metadata

    meta = read_metadata(args.model)
    if args.json:
        print(meta.to_json())
        return 0
    print(f"model:         {args.model}")
    print(f"architecture:  {meta.arch} / {meta.encoder}")
    print(f"input:         {meta.in_channels} channel(s): {', '.join(meta.channel_names)}")
    print(f"classes:       {meta.classes}")
    pairs = zip(meta.class_names, meta.class_colors, strict=True)
    for k, (name, color) in enumerate(pairs, start=1):
        print(f"  {k:>3}  {color}  {name}")
    if meta.normalization is not None:
        n = asdict(meta.normalization)
        print(f"normalization: {n['mode']} offset={[round(v, 4) for v in n['offset']]} "
              f"scale={[round(v, 6) for v in n['scale']]}")
    print(f"tile / halo:   {meta.tile} / {meta.halo} px (stride {meta.stride})")
    if meta.pixel_size:
        print(f"pixel size:    {meta.pixel_size} {meta.pixel_unit or ''}")
    if meta.training:
        print("training:      " + json.dumps(meta.training, sort_keys=True)[:2000])
    print("versions:      " + ", ".join(f"{k} {v}" for k, v in meta.versions.items()))
    return 0
