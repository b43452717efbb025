"""Assemble README.md from docs/sections/*.md and the benchmark tables in benchmarks/results.

Placeholders such as ``BENCH_EFFICIENCY`` on a line of their own are replaced by the matching
``benchmarks/results/<name>.md`` table, so the README always quotes the latest measured figures.
Usage: ``python scripts/build_readme.py``.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["_head", "_core", "napari", "training", "uncertainty", "generation", "performance",
            "scale-out", "architecture", "_tail"]
TABLES = {
    "SEAM_TABLE": "seams", "BENCH_EFFICIENCY": "efficiency", "BENCH_MONAI": "monai",
    "BENCH_MEMORY": "memory", "BENCH_CLUSTER": "cluster", "BENCH_SCRIBBLES": "scribbles",
    "BENCH_GPU": "gpu", "GUI_RESPONSIVENESS_TABLE": "gui_responsiveness",
    "BENCH_GENERATION": "generation",
    "BENCH_ADVERSARIAL": "adversarial", "BENCH_ACTIVE": "active",
}


def table(name: str) -> str:
    path = ROOT / "benchmarks" / "results" / f"{name}.md"
    if not path.exists():
        return f"*(not measured yet: run `benchmarks/bench_{name}.py`)*"
    return path.read_text().strip()


def main() -> None:
    parts = []
    for name in SECTIONS:
        path = ROOT / "docs" / "sections" / f"{name}.md"
        if path.exists():
            text = path.read_text().strip()
            lines = [table(TABLES[ln.strip()]) if ln.strip() in TABLES else ln
                     for ln in text.splitlines()]
            parts.append("\n".join(lines))
    (ROOT / "README.md").write_text("\n\n".join(parts) + "\n")
    print(f"README.md: {sum(p.count(chr(10)) for p in parts)} lines from {len(parts)} sections")


if __name__ == "__main__":
    main()
