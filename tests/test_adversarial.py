"""Adversarial training and pseudo-labels on the training engine: runs, checkpoints, resumes,
cancels; the discriminator never reaches a saved model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from napari_semseg import load_model, train
from napari_semseg.core.errors import SemSegError
from napari_semseg.core.train import iter_train
from napari_semseg.core.training.checkpoint import read_checkpoint_state, state_path
from napari_semseg.core.training.tasks.adversarial import Discriminator, one_hot, pseudo_labels

SMALL = dict(arch="unet", encoder="resnet18", encoder_depth=3, decoder_channels="16,8,8",
             patch_size=64, batch_size=2, steps_per_epoch=3, device="cpu", validation=0.0,
             amp=False)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    image = (rng.random((128, 128)) * 60).astype(np.uint8)
    image[30:90, 40:100] += 150
    strokes = np.zeros(image.shape, np.uint8)
    strokes[55:60, 45:95] = 2
    strokes[5:10, 5:120] = 1
    strokes[110:115, 10:120] = 1
    return image, strokes


def _run(job):
    events = []
    while True:
        try:
            events.append(next(job))
        except StopIteration as done:
            return events, done.value


def test_adversarial_run_reports_the_discriminator_and_exports_only_the_segmenter(data, tmp_path):
    image, strokes = data
    path = tmp_path / "adv.safetensors"
    events, model = _run(iter_train(image, strokes, epochs=2, adversarial=0.1,
                                    checkpoint=str(path), **SMALL))
    steps = [e for e in events if not e.epoch_end and e.step > 0]
    assert steps and all("loss_d" in e.metrics and np.isfinite(e.metrics["loss_d"])
                         for e in steps)
    assert "adversarial term 0.1" in events[0].message
    assert not any("disc" in k for k in model.state_dict())
    assert model.metadata.training["adversarial"]["weight"] == 0.1
    with safe_open(str(path), framework="pt") as fh:
        assert not any("disc" in k for k in fh.keys())
    saved = load_model(path)
    assert set(saved.state_dict()) == set(model.state_dict())
    assert not state_path(path).exists()  # a finished run leaves only the model


def test_resume_continues_with_the_saved_discriminator(data, tmp_path):
    image, strokes = data
    path = tmp_path / "adv.safetensors"
    job = iter_train(image, strokes, epochs=3, adversarial=0.2, checkpoint=str(path), **SMALL)
    for event in job:
        if event.epoch_end and event.epoch == 1:
            break
    job.close()
    _, tensors = read_checkpoint_state(path)
    saved_d = {k: v for k, v in tensors.items() if k.startswith("module/discriminator/")}
    assert saved_d and any(k.startswith("opt/discriminator/") for k in tensors)
    with safe_open(str(path), framework="pt") as fh:  # the model file holds only the segmenter
        assert not any("disc" in k for k in fh.keys())

    from napari_semseg.core.training.tasks import adversarial as adv

    seen = {}
    original = adv.AdversarialTask.start

    def spy(self, saved):
        out = original(self, saved)
        seen["task"] = self
        return out

    adv.AdversarialTask.start = spy
    try:
        events, model = _run(iter_train(image, strokes, epochs=3, adversarial=0.2,
                                        checkpoint=str(path), resume=True, **SMALL))
    finally:
        adv.AdversarialTask.start = original
    epochs = [e.epoch for e in events if e.epoch_end]
    assert epochs == [2, 3]  # continued after epoch 1
    task = seen["task"]
    # the discriminator was restored before the first resumed step and then trained on
    restored_keys = {k[len("module/discriminator/"):] for k in saved_d}
    assert restored_keys == set(task.disc.state_dict())
    assert model.metadata.training["epochs"] == 3


def test_cancel_ends_the_run_with_a_model(data):
    image, strokes = data
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] >= 2

    events, model = _run(iter_train(image, strokes, epochs=50, adversarial=0.1,
                                    pseudo_labels=True, should_stop=should_stop, **SMALL))
    assert calls["n"] == 2
    assert events[-1].epoch_end and events[-1].epoch == 1
    assert not any("disc" in k for k in model.state_dict())


def test_pseudo_label_control_without_a_discriminator(data):
    image, strokes = data
    events, model = _run(iter_train(image, strokes, epochs=3, pseudo_labels=True, **SMALL))
    late = [e for e in events if not e.epoch_end and e.step > 3]
    assert late and all("pseudo_labelled" in e.metrics for e in late)
    assert all("loss_d" not in e.metrics for e in events)
    assert "softmax confidence" in events[0].message


def test_shape_prior_is_checked_and_used(data):
    image, strokes = data
    dense = np.where(image > 100, 2, 1).astype(np.uint8)
    model = train(image, strokes, epochs=1, adversarial=0.1, shape_prior=[(image, dense)],
                  **SMALL)
    assert model.metadata.training["adversarial"]["shape_prior_images"] == 1
    with pytest.raises(SemSegError, match="dense labels 1..2"):
        train(image, strokes, epochs=1, adversarial=0.1, shape_prior=[(image, dense * 0)],
              **SMALL)
    with pytest.raises(SemSegError, match="shape_prior needs adversarial > 0"):
        train(image, strokes, epochs=1, shape_prior=[(image, dense)], **SMALL)


def test_settings_range_and_cli_option(data):
    image, strokes = data
    with pytest.raises(SemSegError, match="--adversarial must be"):
        train(image, strokes, epochs=1, adversarial=-1.0, **SMALL)
    import argparse

    from napari_semseg.cli.options import add_settings_arguments
    from napari_semseg.core.settings import TrainSettings

    parser = argparse.ArgumentParser(prog="napari-semseg train")
    add_settings_arguments(parser, TrainSettings)
    args = parser.parse_args(["--adversarial", "0.1", "--pseudo-labels"])
    assert args.adversarial == 0.1 and args.pseudo_labels is True


def test_discriminator_pieces():
    torch.manual_seed(0)
    d = Discriminator(3 + 2)
    for b in (1, 2, 8):  # no batch statistics: one pixel's score does not depend on the batch
        x, m = torch.randn(b, 3, 32, 32), torch.rand(b, 2, 32, 32)
        out = d(x, m)
        assert out.shape == (b, 1, 32, 32)
        np.testing.assert_allclose(d.eval()(x[:1], m[:1]).detach(), out[:1].detach(),
                                   atol=1e-5)
    labels = torch.tensor([[[0, 1], [2, 1]]])
    assert one_hot(labels, 2)[0].tolist() == [[[0, 1], [0, 1]], [[0, 0], [1, 0]]]
    probs = torch.tensor([[[[0.9, 0.2]], [[0.1, 0.8]]]])  # (1, 2, 1, 2)
    painted = torch.tensor([[[True, False]]])
    conf = torch.tensor([[[0.9, 0.9]]])
    assert pseudo_labels(probs, painted, conf, 0.5).tolist() == [[[0, 2]]]
    assert pseudo_labels(probs, painted, conf * 0, 0.5).tolist() == [[[0, 0]]]
