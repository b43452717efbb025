"""Map settings dataclasses onto argparse options, so the CLI and the API share option names.

Everything comes from the fields' metadata (:func:`napari_semseg.core.settings.option_fields`):
``PredictSettings.batch_size`` becomes ``--batch-size`` of type ``int``; booleans become
``--flag/--no-flag``; choices become argparse choices. Values are checked against the field's
range while parsing: a value out of range raises :class:`OptionError`, which
:func:`napari_semseg.cli.main` prints as one line (exit status 2), the same line the API raises.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from napari_semseg.core.errors import SemSegError
from napari_semseg.core.settings import OptionField, option_fields


class OptionError(Exception):
    """A settings value refused while parsing the command line (one line for the user).

    Not a ``ValueError``: argparse would replace the message by "invalid value".
    """

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog  # "napari-semseg predict"


def value_parser(spec: OptionField, prog: str) -> Callable[[str], Any]:
    """The argparse ``type`` of a field: converts the text, then checks the field's range
    (:class:`OptionError` naming the command ``prog`` if it is refused)."""

    def parse(text: str) -> Any:
        value = spec.type(text)  # ValueError -> argparse's "invalid int value: 'x'"
        try:
            spec.check(value)
        except SemSegError as exc:
            raise OptionError(str(exc), prog) from None
        return value

    parse.__name__ = spec.type.__name__  # argparse names the type in its messages
    return parse


def _help(spec: OptionField) -> str:
    text = spec.help.replace("%", "%%")  # argparse formats help
    if "(default:" in text or spec.type is bool:
        return text
    return f"{text} (default: {spec.default})"


def add_settings_arguments(parser: argparse.ArgumentParser, settings_cls: type,
                           skip: tuple[str, ...] = ()) -> None:
    """Add one option per dataclass field (``--field-name``), defaulting to the field's default."""
    group = parser.add_argument_group(f"{settings_cls.__name__} options")
    for name, spec in option_fields(settings_cls).items():
        if name in skip:
            continue
        if spec.type is bool:
            group.add_argument(spec.flag, dest=name, action=argparse.BooleanOptionalAction,
                               default=spec.default, help=_help(spec))
        elif spec.option.true_choice:  # a former switch: a bare --flag means true_choice
            group.add_argument(spec.flag, dest=name, type=value_parser(spec, parser.prog),
                               nargs="?", const=spec.option.true_choice,
                               choices=spec.option.choices, default=spec.default,
                               help=_help(spec))
        else:
            group.add_argument(spec.flag, dest=name, type=value_parser(spec, parser.prog),
                               choices=spec.option.choices or None, default=spec.default,
                               help=_help(spec))


def settings_from_args(settings_cls: type, args: argparse.Namespace) -> Any:
    """Build the dataclass from parsed arguments (fields absent from ``args`` keep defaults)."""
    values = {name: getattr(args, name) for name in option_fields(settings_cls)
              if hasattr(args, name)}
    return settings_cls(**values)
