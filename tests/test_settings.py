"""Settings metadata is the single source of ranges, CLI options and documented defaults."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest

from napari_semseg.cli import build_parser, main
from napari_semseg.core.errors import SemSegError
from napari_semseg.core.settings import Option, PredictSettings, TrainSettings, option_fields

SETTINGS = (PredictSettings, TrainSettings)

# the messages of validated() before the ranges moved into the field metadata, word for word
MESSAGES = [
    (PredictSettings, {"tile": 0}, "--tile must be a positive number of pixels, got 0"),
    (PredictSettings, {"overlap": -1}, "--overlap must be 0 or more pixels, got -1"),
    (PredictSettings, {"batch_size": 0}, "--batch-size must be at least 1, got 0"),
    (PredictSettings, {"chunk": 32}, "--chunk must be at least 64 pixels, got 32"),
    (PredictSettings, {"pixel_size": 0.0}, "--pixel-size must be positive, got 0.0"),
    (PredictSettings, {"pixel_size": math.nan}, "--pixel-size must be positive, got nan"),
    (PredictSettings, {"tta": 0}, "--tta must be 1 (off) to 8 transformed copies, got 0"),
    (PredictSettings, {"tta": 9}, "--tta must be 1 (off) to 8 transformed copies, got 9"),
    (TrainSettings, {"epochs": 0}, "--epochs must be at least 1, got 0"),
    (TrainSettings, {"time_budget": 0.0}, "--time-budget must be positive seconds, got 0.0"),
    (TrainSettings, {"patch_size": 50}, "--patch-size must be a multiple of 32, got 50"),
    (TrainSettings, {"patch_size": 0}, "--patch-size must be a multiple of 32, got 0"),
    (TrainSettings, {"validation": 1.0}, "--validation must be in [0, 1), got 1.0"),
    (TrainSettings, {"validation": -0.1}, "--validation must be in [0, 1), got -0.1"),
    (TrainSettings, {"batch_size": 0}, "--batch-size must be at least 1, got 0"),
    (TrainSettings, {"steps_per_epoch": 0}, "--steps-per-epoch must be at least 1, got 0"),
    (TrainSettings, {"learning_rate": 0.0}, "--learning-rate must be positive, got 0.0"),
    (TrainSettings, {"encoder_depth": 6}, "--encoder-depth must be 1 to 5, got 6"),
    (TrainSettings, {"encoder_depth": 0}, "--encoder-depth must be 1 to 5, got 0"),
    (TrainSettings, {"class_balance": 1.5}, "--class-balance must be in [0, 1], got 1.5"),
    (TrainSettings, {"intensity_augment": -1.0},
     "--intensity-augment must be in [0, 1], got -1.0"),
    (TrainSettings, {"cutmix": 2.0}, "--cutmix must be in [0, 1], got 2.0"),
    (TrainSettings, {"scale_jitter": -0.5}, "--scale-jitter must be 0 or more, got -0.5"),
    (TrainSettings, {"early_stopping": 0}, "--early-stopping must be at least 1, got 0"),
    (TrainSettings, {"threads": 0}, "--threads must be at least 1, got 0"),
    (TrainSettings, {"resume": True}, "--resume needs --checkpoint (the file to continue from)"),
]


@pytest.mark.parametrize("cls,values,message", MESSAGES)
def test_out_of_range_values_give_the_same_one_line_messages(cls, values, message):
    with pytest.raises(SemSegError) as info:
        cls(**values).validated()
    assert str(info.value) == message


@pytest.mark.parametrize("cls", SETTINGS)
def test_defaults_are_valid(cls):
    assert cls().validated() == cls()


def _edges(spec):
    """(accepted, refused) values at the edges of a field's range, derived from its metadata."""
    option = spec.option
    unit = 1 if spec.type is int else 0.001
    accepted, refused = [], []
    if option.minimum is not None:
        (refused if option.exclusive_minimum else accepted).append(option.minimum)
        refused.append(option.minimum - unit)
    if option.maximum is not None:
        (refused if option.exclusive_maximum else accepted).append(option.maximum)
        refused.append(option.maximum + unit)
    if option.multiple_of:
        accepted.append(option.multiple_of * 3)
        refused.append(option.multiple_of * 3 + 1)
    if option.choices:
        accepted.extend(option.choices)
        refused.append(option.choices[0] + "x")
    return accepted, refused


RANGED = [(cls, name) for cls in SETTINGS for name, spec in option_fields(cls).items()
          if any(_edges(spec))]


def test_the_ranges_cover_every_checked_option():
    names = {(cls.__name__, name) for cls, name in RANGED}
    assert {(cls.__name__, next(iter(v))) for cls, v, _ in MESSAGES if "resume" not in v} <= names
    assert ("TrainSettings", "loss") in names and ("TrainSettings", "normalization") in names


@pytest.mark.parametrize("cls,name", RANGED)
def test_validation_follows_the_metadata(cls, name):
    spec = option_fields(cls)[name]
    accepted, refused = _edges(spec)
    for value in accepted:
        cls(**{name: value}).validated()
    for value in refused:
        with pytest.raises(SemSegError, match=f"^{spec.flag} must be "):
            cls(**{name: value}).validated()
    if spec.optional:
        cls(**{name: None}).validated()


def test_every_field_has_an_option_with_help():
    for cls in SETTINGS:
        for name, spec in option_fields(cls).items():
            assert isinstance(spec.option, Option) and spec.help, name
            assert spec.type in (int, float, str, bool), name
            if spec.default is not None and spec.type is not bool:
                assert spec.option.accepts(spec.default), name


def test_unknown_metadata_keys_fail_at_definition():
    from napari_semseg.core.settings import _opt

    with pytest.raises(TypeError):
        _opt(1, "help", minimun=1)


# CLI ---------------------------------------------------------------------------------------
COMMAND_SETTINGS = {"predict": PredictSettings, "train": TrainSettings,
                    "evaluate": PredictSettings}


def _actions(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {a.dest: a for a in sub.choices[command]._actions}


@pytest.mark.parametrize("command", sorted(COMMAND_SETTINGS))
def test_cli_options_are_generated_from_the_fields(command):
    actions = _actions(command)
    for name, spec in option_fields(COMMAND_SETTINGS[command]).items():
        if name not in actions:
            continue
        action = actions[name]
        assert action.option_strings[0] == spec.flag
        assert action.default == spec.default
        assert action.help.replace("%%", "%").startswith(spec.help)
        if spec.type is not bool:
            assert action.type.__name__ == spec.type.__name__
            assert tuple(action.choices or ()) == spec.option.choices


CLI_CASES = [(cmd, name) for cmd, cls in (("predict", PredictSettings), ("train", TrainSettings))
             for c, name in RANGED if c is cls]
REQUIRED = {"predict": ["in.tif", "--model", "m.safetensors", "--output", "out.zarr"],
            "train": ["--images", "a.tif", "--labels", "b.tif", "--output", "m.safetensors"]}


@pytest.mark.parametrize("command,name", CLI_CASES)
def test_cli_refuses_out_of_range_values_while_parsing(command, name, capsys, tmp_path,
                                                       monkeypatch):
    """One line, exit status 2, the API's message; nothing is read (the inputs do not exist)."""
    monkeypatch.chdir(tmp_path)
    spec = option_fields(COMMAND_SETTINGS[command])[name]
    bad = _edges(spec)[1][-1]
    with pytest.raises(SemSegError) as api:
        spec.check(bad)
    code = main([command, *REQUIRED[command], spec.flag, str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"napari-semseg {command}: error: {api.value}"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", sorted(COMMAND_SETTINGS))
def test_cli_help_states_each_default_once(command):
    """Help texts that explain a computed default are not followed by "(default: None)"."""
    for name, action in _actions(command).items():
        if name in option_fields(COMMAND_SETTINGS[command]) and action.type is not None:
            assert action.help.count("(default:") == 1, action.help


# documented defaults -------------------------------------------------------------------------
def documented_default(cls, name) -> str:
    """The text of "(default: ...)" in a field's help (nested parentheses allowed)."""
    text = option_fields(cls)[name].help
    start = text.index("(default:") + 1
    depth, end = 1, start
    while depth:
        depth += {"(": 1, ")": -1}.get(text[end], 0)
        end += 1
    return text[start:end - 1]


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"(?<![\w.-])\d+(?:\.\d+)?", text)]


def _plan(stride: int):
    """The tiling ``segment`` resolves on the CPU with default settings for a model of
    ``stride`` (the model's tile and halo at their defaults)."""
    import torch

    from napari_semseg.core.models import ModelMetadata
    from napari_semseg.core.predict import plan_tiles

    model = SimpleNamespace(metadata=ModelMetadata("unet", "resnet18", 1, 2, stride=stride))
    source = SimpleNamespace(plane_shape=(8192, 8192))
    return plan_tiles(source, model, PredictSettings(), torch.device("cpu"))


def test_documented_tile_and_overlap_defaults_are_the_computed_ones():
    plans = {stride: _plan(stride) for stride in (16, 32)}
    for name in ("tile", "overlap"):
        pairs = re.findall(r"(\d+) for stride (\d+)", documented_default(PredictSettings, name))
        assert {int(s): int(v) for v, s in pairs} == \
            {s: getattr(p, name) for s, p in plans.items()}, name
    chunk = documented_default(PredictSettings, "chunk")
    assert numbers(chunk) == [plans[32].chunk] == [plans[16].chunk]
    batch = documented_default(PredictSettings, "batch_size")
    assert re.findall(r"(\d+) on CPU", batch) == [str(plans[32].batch_size)]


def test_documented_epochs_default_is_the_trainers():
    from napari_semseg.core.train import DEFAULT_EPOCHS

    assert numbers(documented_default(TrainSettings, "epochs")) == [DEFAULT_EPOCHS]


def test_documented_plain_defaults_are_the_field_defaults():
    """Every "(default: ...)" that names a number for a field with a fixed default names it."""
    for cls in SETTINGS:
        for name, spec in option_fields(cls).items():
            if "(default:" in spec.help and spec.default is not None:
                assert numbers(documented_default(cls, name))[:1] == [spec.default], name
            if "(default:" in spec.help and spec.default is None:
                assert name in {"tile", "overlap", "chunk", "batch_size", "epochs",
                                "channel_axis", "early_stopping", "threads"}, \
                    f"{name}: a computed default needs a test above"
