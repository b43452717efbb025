"""Model metadata is checked against its schema when loaded and before it is saved (issue 15):
a corpus of malformed headers, each refused with one line naming the problem, before any work."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_semseg import build_model, load_model, save_model, segment
from napari_semseg.cli import main
from napari_semseg.core.constants import METADATA_KEY
from napari_semseg.core.errors import SemSegError
from napari_semseg.core.normalize import Normalization


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("unet", "resnet18", in_channels=1, classes=2, encoder_depth=3,
                        decoder_channels=(16, 8, 8), encoder_weights=None,
                        normalization=Normalization("meanstd", [127.0], [1 / 70.0]))
    return save_model(model, tmp_path_factory.mktemp("schema") / "good.safetensors")


def rewrite(good_file, tmp_path, change, tensors_change=None):
    """A copy of the good model with its metadata (a dict) changed by ``change``."""
    from safetensors import safe_open

    with safe_open(str(good_file), framework="pt") as fh:
        header = dict(fh.metadata())
    meta = json.loads(header[METADATA_KEY])
    out = change(meta)
    header[METADATA_KEY] = json.dumps(meta if out is None else out)
    tensors = load_file(str(good_file))
    if tensors_change is not None:
        tensors_change(tensors)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata=header)
    return path


def _set(key, value):
    def change(meta):
        meta[key] = value
    return change


def _norm(**kw):
    def change(meta):
        meta["normalization"].update(kw)
    return change


CASES = {
    "NaN normalization scale": (_norm(scale=[float("nan")]), "normalization scale holds a value "
                                                            "that is not a finite number"),
    "zero normalization scale": (_norm(scale=[0.0]), "normalization scale holds 0"),
    "unknown normalization mode": (_norm(mode="zscore"), "normalization mode 'zscore'"),
    "offset per channel": (_norm(offset=[1.0, 2.0]), "normalization offset needs one number "
                                                     "per channel"),
    "fewer class names": (_set("class_names", ["only one"]), "class_names has 1 entries for 2"),
    "bad colour": (_set("class_colors", ["#ff0000", "red"]), "class_colors holds 'red', not a "
                                                             "#rrggbb colour"),
    "negative classes": (_set("classes", -3), "classes must be 1 to"),
    "tile as text": (_set("tile", "big"), "tile must be a whole number"),
    "stride 0": (_set("stride", 0), "stride must be a whole number from 1"),
    "future format": (_set("format", "napari-semseg/9"), "format napari-semseg/9 is newer than "
                                                         "this napari-semseg reads"),
    "foreign format": (_set("format", "something/1"), "is not a napari-semseg model format"),
    "nested JSON list": (lambda meta: [meta], "damaged napari-semseg metadata"),
    "pixel size 0": (_set("pixel_size", 0), "pixel_size must be a positive number"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_metadata_is_refused_with_one_line(good_file, tmp_path, case, capsys):
    change, message = CASES[case]
    bad = rewrite(good_file, tmp_path, change)
    with pytest.raises(SemSegError, match=message) as info:
        load_model(bad)
    assert "\n" not in str(info.value)
    # the CLI says the same in one line, exit 2, nothing written
    out = tmp_path / "out.tif"
    import numpy as np
    import tifffile

    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((64, 64), np.uint8))
    code = main(["predict", str(image), "--model", str(bad), "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "metadata" in err
    assert not out.exists()


def test_integer_weights_are_refused(good_file, tmp_path):
    def to_int(tensors):
        key = next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[key] = tensors[key].to(torch.int64)

    bad = rewrite(good_file, tmp_path, lambda meta: None, to_int)
    with pytest.raises(SemSegError, match="holds torch.int64 numbers where .* needs floating"):
        load_model(bad)


def test_the_good_file_loads_and_a_model_with_bad_metadata_is_not_saved(good_file, tmp_path):
    import numpy as np

    model = load_model(good_file)
    assert segment(np.zeros((64, 64), np.uint8), model, tile=64, overlap=0).labels.shape == (64, 64)
    model.metadata.class_colors = ["#ff0000", "#zzzzzz"]
    with pytest.raises(SemSegError, match="cannot save the model .* class_colors holds '#zzzzzz'"):
        save_model(model, tmp_path / "never.safetensors")
    assert not (tmp_path / "never.safetensors").exists()
