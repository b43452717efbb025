"""``napari-semseg info`` and the command-line entry point."""

from __future__ import annotations

import json

import pytest

from napari_semseg import save_model
from napari_semseg.cli import main


def test_info_prints_metadata(tmp_path, tiny_model, capsys):
    tiny_model.metadata.class_names = ["background", "nucleus", "membrane"]
    path = save_model(tiny_model, tmp_path / "m.safetensors")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "unet / resnet18" in out and "nucleus" in out and "tile / halo:   128 / 16" in out


def test_info_json_is_the_stored_metadata(tmp_path, tiny_model, capsys):
    path = save_model(tiny_model, tmp_path / "m.safetensors")
    assert main(["info", "--json", str(path)]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["classes"] == 3 and meta["format"] == "napari-semseg/1"


def test_info_on_a_non_model_is_one_line(tmp_path, capsys):
    bad = tmp_path / "x.safetensors"
    bad.write_text("hello")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a napari-semseg model file" in err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "predict" in out and "info" in out


@pytest.mark.parametrize("command", ["predict", "train", "evaluate", "info", "demo"])
def test_every_commands_help_renders_every_option(command, capsys):
    """Each settings field appears with its help text (a stray '%' used to break argparse)."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "option_strings" not in out
    if command == "predict":
        assert "label agreement with fp32" in out and "--no-amp" in out
