"""Bundled encoder starts (fp16 safetensors) with a provenance and licence note beside each.

``manifest.json`` lists them; use :func:`napari_semseg.core.pretrained.list_starts`.
"""
