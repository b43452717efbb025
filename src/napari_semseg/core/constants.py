"""Names and colours shared by the engine, the files it writes and the napari plugin.

Torch-free, so that the napari reader and writer can use it without loading the engine.
"""

from __future__ import annotations

# The key of the plugin's entry in model files, zarr attributes, TIFF descriptions and
# ``layer.metadata``.
METADATA_KEY = "napari_semseg"

# Distinct colours for classes 1..K (RGB); class k uses PALETTE[(k - 1) % len(PALETTE)].
PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
]


def default_colors(n: int) -> list[str]:
    """``#rrggbb`` colours of classes 1..n (the default palette)."""
    return ["#%02x%02x%02x" % PALETTE[k % len(PALETTE)] for k in range(n)]


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` as three 0-255 integers."""
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)
