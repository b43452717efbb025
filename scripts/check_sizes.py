"""List the functions of a source tree longer than the project's limit (60 lines).

    python scripts/check_sizes.py [ROOT ...] [--max-lines N]

A function's length runs from its ``def`` line (decorators excluded) to its last line,
docstring and comments included; nested functions count inside their parent and on their own.
Exits 1 when any function is too long, listing each as ``path:line name (N lines)``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

MAX_LINES = 60


def long_functions(path: Path, max_lines: int) -> Iterator[tuple[int, str, int]]:
    """``(line, qualified name, length)`` of every function in ``path`` over ``max_lines``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def visit(node: ast.AST, prefix: str) -> Iterator[tuple[int, str, int]]:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}."
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                if length > max_lines:
                    yield child.lineno, name[:-1], length
            yield from visit(child, name)

    yield from visit(tree, "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", default=[Path("src")], type=Path)
    parser.add_argument("--max-lines", type=int, default=MAX_LINES)
    args = parser.parse_args(argv)
    found = n_files = 0
    for root in args.roots:
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        n_files += len(files)
        for path in files:
            for line, name, length in long_functions(path, args.max_lines):
                print(f"{path}:{line} {name} ({length} lines > {args.max_lines})")
                found += 1
    if found:
        print(f"{found} function(s) over {args.max_lines} lines: split them", file=sys.stderr)
        return 1
    print(f"no function over {args.max_lines} lines in {n_files} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
