"""Record a bundled start in src/napari_semseg/weights/manifest.json (for the weight scripts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "napari_semseg" / "weights"


def shared_dir() -> Path:
    """``shared/`` beside the checkout (also from a git worktree one level deeper)."""
    for parent in ROOT.parents:
        if (parent / "shared").is_dir():
            return parent / "shared"
    return ROOT.parent / "shared"


def record_start(name: str, entry: dict[str, Any]) -> Path:
    """Add or replace ``name`` in the manifest (sorted, one entry per start)."""
    manifest = WEIGHTS / "manifest.json"
    entries = json.loads(manifest.read_text()) if manifest.exists() else {}
    entries[name] = entry
    manifest.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    return manifest
