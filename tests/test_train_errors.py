"""Bad input to training: one clear SemSegError before any training step (one test per case)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_semseg import build_model
from napari_semseg.core.errors import SemSegError
from napari_semseg.core.train import iter_train


def _pair(size=64):
    img = np.random.default_rng(0).integers(0, 255, (size, size)).astype(np.uint8)
    lab = np.zeros((size, size), np.uint8)
    lab[5:10, 5:30] = 1
    lab[40:45, 10:50] = 2
    return img, lab


def _fails(match, *args, **kwargs):
    """iter_train must raise at the call, before returning the generator (no step runs)."""
    with pytest.raises(SemSegError, match=match) as info:
        iter_train(*args, device="cpu", **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_image_and_annotation_shapes_differ():
    img, lab = _pair()
    msg = _fails("has shape \\(64, 64\\) but its annotations have shape \\(64, 60\\)",
                 img, lab[:, :60])
    assert "same pixels" in msg


def test_no_annotated_pixel():
    img, _ = _pair()
    _fails("no annotated pixel", img, np.zeros((64, 64), np.uint8))


def test_only_one_class_annotated():
    img, lab = _pair()
    lab[lab == 2] = 1
    _fails("only class 1 is annotated; paint at least two classes", img, lab)


def test_annotation_values_above_the_models_classes():
    img, lab = _pair()
    lab[50:52, 5:20] = 3
    model = build_model("unet", "mobilenet_v2", 1, 2, encoder_depth=3, decoder_channels=(8, 8, 8))
    _fails("annotations use class 3 but the model has 2 classes .*pass class_names with 3 "
           "names to add classes", img, lab, model=model)


def test_annotation_values_above_the_class_names():
    img, lab = _pair()
    lab[50:52, 5:20] = 3
    _fails("annotations use class 3 but class_names lists only 2", img, lab,
           class_names=["a", "b"])


def test_float_annotations():
    img, lab = _pair()
    _fails("floating point .*give integer labels", img, lab.astype(np.float32))


def test_nan_in_image():
    img, lab = _pair()
    img = img.astype(np.float32)
    img[3, 3] = np.nan
    _fails("NaN or infinite pixels", img, lab)


def test_model_channels_do_not_match():
    img, lab = _pair()
    rgb = np.stack([img] * 3, axis=-1)
    model = build_model("unet", "mobilenet_v2", 1, 2, encoder_depth=3, decoder_channels=(8, 8, 8))
    _fails("has 3 channel\\(s\\) but the model to fine-tune expects 1", rgb, lab, model=model)


def test_number_of_images_and_annotations_differ():
    img, lab = _pair()
    _fails("2 image\\(s\\) but 1 annotation", [img, img], [lab])


def test_images_with_different_channels():
    img, lab = _pair()
    _fails("all training images need the same channels", [img, np.stack([img] * 3, -1)],
           [lab, lab])


def test_bad_settings():
    img, lab = _pair()
    _fails("--patch-size must be a multiple of 32", img, lab, patch_size=50)
    _fails("--resume needs --checkpoint", img, lab, resume=True)
    _fails("unknown architecture", img, lab, arch="nonsense")


def test_decoder_widths_that_do_not_match_the_depth():
    img, lab = _pair()
    msg = _fails("--decoder-channels has 2 widths but --encoder-depth is 4", img, lab,
                 decoder_channels="64,32", encoder_depth=4)
    assert "one width per stage" in msg
    _fails("--decoder-channels must be comma-separated integers", img, lab,
           decoder_channels="64,x,16,16")


def test_default_decoder_widths_follow_a_changed_depth():
    from napari_semseg.core.settings import TrainSettings
    from napari_semseg.core.train import _arch_kwargs

    kw = _arch_kwargs(TrainSettings(encoder_depth=3))
    assert kw == {"encoder_depth": 3, "decoder_channels": [64, 32, 16]}
    assert _arch_kwargs(TrainSettings(arch="fpn")) == {}


def test_a_diverging_learning_rate_stops_with_one_line_and_saves_nothing(tmp_path):
    """Issue 15: ``--learning-rate 1e30`` saved a model with NaN weights, exit 0."""
    from napari_semseg import train

    img, lab = _pair(96)
    out = tmp_path / "model.safetensors"
    with pytest.raises(SemSegError, match="diverged at step .* lower the learning rate") as info:
        train(img, lab, epochs=3, steps_per_epoch=4, patch_size=64, batch_size=2,
              encoder_depth=3, decoder_channels="32,16,8", learning_rate=1e30, device="cpu",
              encoder_weights=None, checkpoint=str(out))
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_label_255_meant_as_ignore_is_refused_without_class_names():
    """Issue 15: label 255 in the annotations silently made a 255-class model."""
    img, lab = _pair()
    lab[20:25, 20:40] = 255
    msg = _fails("largest 255.*have no strokes.*such as 255, to 0", img, lab)
    assert "class_names" in msg


def test_one_class_left_unpainted_is_still_trained():
    img, lab = _pair()
    lab[lab == 2] = 3  # classes 1 and 3 painted, class 2 not (a gap, not a typo of 255)
    job = iter_train(img, lab, device="cpu", epochs=1, steps_per_epoch=1, patch_size=64,
                     batch_size=2, encoder_depth=3, decoder_channels="32,16,8",
                     encoder_weights=None)
    first = next(job)
    job.close()
    assert first.step == 0


def test_class_colours_that_are_not_colours_are_refused_before_training():
    img, lab = _pair()
    _fails(r"class_colors holds '#zzzzzz': give colours as #rrggbb", img, lab,
           class_names=["a", "b"], class_colors=["#ff0000", "#zzzzzz"])


def test_an_unwritable_model_folder_is_refused_before_training(tmp_path, monkeypatch):
    """Issue 15: a read-only output folder failed only after training."""
    import os

    from napari_semseg.core import train as train_module

    img, lab = _pair()
    _fails("does not exist", img, lab, checkpoint=str(tmp_path / "none" / "m.safetensors"))
    folder = tmp_path / "ro"
    folder.mkdir()
    # as root every folder is writable: ask the check as an ordinary user would be answered
    real = os.access
    monkeypatch.setattr(train_module.os, "access",
                        lambda p, mode: False if str(p) == str(folder) else real(p, mode))
    _fails("its folder is not writable", img, lab, checkpoint=str(folder / "m.safetensors"))


def test_a_patch_far_larger_than_the_images_is_refused_before_training():
    img, lab = _pair()
    _fails("patch_size 100000 is far larger than the largest training image \\(64 px\\); use "
           "--patch-size 64 or less", img, lab, patch_size=100000)
