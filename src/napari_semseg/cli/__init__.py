"""The ``napari-semseg`` command line.

Each subcommand lives in its own module with ``register(subparsers)`` and ``run(args) -> int``.
Every :class:`~napari_semseg.core.errors.SemSegError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

COMMANDS = ("predict", "train", "evaluate", "info", "demo", "generate")


def build_parser() -> argparse.ArgumentParser:
    from napari_semseg import __version__

    parser = argparse.ArgumentParser(
        prog="napari-semseg",
        description="Semantic segmentation of very large images with CNNs.")
    parser.add_argument("--version", action="version", version=f"napari-semseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = import_module(f"napari_semseg.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"napari_semseg.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace | int:
    """Parsed arguments, or exit status 2 after one line for a value out of its range."""
    from .options import OptionError

    parser = build_parser()
    try:
        return parser.parse_args(argv)
    except OptionError as exc:
        print(f"{exc.prog}: error: {exc}", file=sys.stderr)
        return 2


def _one_line_warnings(command: str) -> None:
    """Show the library's warnings (an input unlike the training data...) as one line each."""
    import warnings

    from napari_semseg.core.errors import SemSegWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if issubclass(category, SemSegWarning):
            print(f"napari-semseg {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    warnings.simplefilter("always", SemSegWarning)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``napari-semseg`` console script."""
    args = _parse(argv)
    if isinstance(args, int):
        return args
    from napari_semseg.core.errors import Cancelled, SemSegError

    _one_line_warnings(args.command)
    try:
        return int(args.run(args) or 0)
    except SemSegError as exc:
        print(f"napari-semseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Cancelled as exc:
        print(f"napari-semseg {args.command}: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"napari-semseg {args.command}: interrupted; nothing was left under the output "
              "name (use --resume to continue)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
