"""Map settings dataclasses onto argparse options, so the CLI and the API share option names.

``PredictSettings.batch_size`` becomes ``--batch-size``; booleans become ``--flag/--no-flag``.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields
from typing import Any


def _base_type(annotation: Any) -> type:
    hints = annotation
    if isinstance(hints, str):
        hints = eval(hints, {"int": int, "float": float, "str": str, "bool": bool, "None": None})  # noqa: S307
    origin = typing.get_origin(hints)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hints) if a is not type(None)]
        return args[0]
    return hints


def add_settings_arguments(parser: argparse.ArgumentParser, settings_cls: type,
                           skip: tuple[str, ...] = ()) -> None:
    """Add one option per dataclass field (``--field-name``), defaulting to the field's default."""
    group = parser.add_argument_group(f"{settings_cls.__name__} options")
    for f in fields(settings_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        typ = _base_type(f.type)
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help
        if typ is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=default, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=typ, default=default,
                               help=f"{help_text} (default: {default})")


def settings_from_args(settings_cls: type, args: argparse.Namespace) -> Any:
    """Build the dataclass from parsed arguments (fields absent from ``args`` keep defaults)."""
    values = {f.name: getattr(args, f.name) for f in fields(settings_cls) if hasattr(args, f.name)}
    return settings_cls(**values)
