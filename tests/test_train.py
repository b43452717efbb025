"""Training: API, progress stream, determinism, cancel, feed, checkpoint/resume, fine-tune."""

from __future__ import annotations

import numpy as np
import torch

from napari_semseg import load_model, save_model, segment
from napari_semseg.core.scribbles import make_scribbles
from napari_semseg.core.train import AnnotationFeed, TrainProgress, iter_train, train

FAST = dict(encoder="mobilenet_v2", encoder_depth=3, decoder_channels="16,8,8", patch_size=64,
            batch_size=2, steps_per_epoch=3, epochs=2, device="cpu", learning_rate=3e-3, threads=1)


def blobs(seed=0, size=96, channels=None):
    """An easy 2-class image (bright disks on a dark background), its mask and scribbles."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    dense = np.ones((size, size), np.uint8)
    for _ in range(6):
        cy, cx, r = rng.integers(10, size - 10, 2).tolist() + [int(rng.integers(6, 14))]
        dense[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 2
    img = np.where(dense == 2, 170, 70) + rng.normal(0, 12, dense.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if channels:
        img = np.stack([img] * channels, axis=-1)
    return img, dense, make_scribbles(dense, fraction=0.05, radius=1, seed=seed)


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values()
                      if p.is_floating_point()])


def test_train_returns_a_model_with_metadata_that_segments(tmp_path):
    img, dense, scrib = blobs()
    events = []
    model = train(img, scrib, class_names=["background", "blob"], callback=events.append, **FAST)
    meta = model.metadata
    assert meta.classes == 2 and meta.class_names == ["background", "blob"]
    assert meta.normalization is not None and meta.normalization.mode == "percentile"
    tr = meta.training
    for key in ("settings", "images", "epochs", "steps", "best_metrics", "time_s", "seed",
                "annotated_pixels"):
        assert key in tr
    assert tr["steps"] == 6 and tr["epochs"] == 2 and tr["seed"] == 0
    assert tr["images"][0]["shape"] == [96, 96]
    assert all(isinstance(e, TrainProgress) for e in events)
    ends = [e for e in events if e.epoch_end]
    assert len(ends) == 2 and all(e.model is not None for e in ends)
    assert "mean_iou" in ends[-1].metrics and "iou/blob" in ends[-1].metrics
    assert [e.step for e in events if not e.epoch_end][1:] == list(range(1, 7))
    labels = segment(img, model, device="cpu").labels
    assert labels.shape == img.shape and set(np.unique(labels)) <= {1, 2}
    path = save_model(model, tmp_path / "m.safetensors")
    again = load_model(path)
    assert again.metadata.training["steps"] == 6
    assert again.metadata.normalization == meta.normalization


def test_training_learns_an_easy_task():
    img, dense, scrib = blobs(1, size=128)
    model = train(img, scrib, **{**FAST, "epochs": 4, "steps_per_epoch": 8, "batch_size": 4},
                  validation=0)
    pred = segment(img, model, device="cpu").labels
    assert (pred == dense).mean() > 0.9


def test_training_is_deterministic_on_cpu_for_a_seed():
    img, _, scrib = blobs()
    a = _weights(train(img, scrib, seed=3, **FAST))
    b = _weights(train(img, scrib, seed=3, **FAST))
    c = _weights(train(img, scrib, seed=4, **FAST))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_should_stop_returns_the_model_so_far():
    img, _, scrib = blobs()
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] >= 2

    job = iter_train(img, scrib, should_stop=stop, **{**FAST, "epochs": 50})
    events = []
    while True:
        try:
            events.append(next(job))
        except StopIteration as done:
            model = done.value
            break
    assert model is not None and model.metadata.training["steps"] == 2
    assert events[-1].epoch_end  # the interrupted epoch is closed (validated) before returning


def test_callback_false_stops_training_and_returns_a_model():
    img, _, scrib = blobs()
    model = train(img, scrib, callback=lambda e: False if e.step >= 1 else None,
                  **{**FAST, "epochs": 50})
    assert model.metadata.training["steps"] == 1


def test_annotation_feed_is_used_from_the_next_epoch():
    img, dense, scrib = blobs()
    feed = AnnotationFeed()
    job = iter_train(img, scrib, feed=feed, **{**FAST, "epochs": 3})
    messages, counts = [], []
    for event in job:
        messages.append((event.epoch, event.epoch_end, event.message))
        if event.epoch_end and event.epoch == 1:
            feed.update(dense)  # the user painted everything
    firsts = [m for e, end, m in messages if m == "using the new annotations"]
    assert len(firsts) == 1
    idx = [i for i, (_, _, m) in enumerate(messages) if m == "using the new annotations"][0]
    assert messages[idx][0] == 1 and not messages[idx][1]  # first step of the second epoch
    del counts


def test_feed_updates_model_provenance():
    img, dense, scrib = blobs()
    feed = AnnotationFeed()
    feed.update(dense)  # picked up at the start of the first epoch
    model = train(img, scrib, feed=feed, **{**FAST, "epochs": 1})
    assert sum(model.metadata.training["annotated_pixels"].values()) == dense.size


def test_checkpoint_is_readable_after_a_kill_and_resume_continues(tmp_path):
    img, _, scrib = blobs()
    ckpt = tmp_path / "ckpt.safetensors"
    settings = {**FAST, "epochs": 3, "checkpoint": str(ckpt)}
    reference = train(img, scrib, **settings)  # uninterrupted
    ckpt.unlink()
    job = iter_train(img, scrib, **settings)
    for event in job:
        if event.epoch_end and event.epoch == 2:
            break
    job.close()  # killed after the second epoch
    mid = load_model(ckpt)
    assert mid.metadata.training["epochs"] == 2 and not mid.metadata.training["finished"]
    assert ckpt.with_name(ckpt.name + ".state").exists()
    events = []
    resumed = train(img, scrib, resume=True, callback=events.append, **settings)
    assert events[0].step == 6  # continues where it stopped
    assert resumed.metadata.training["epochs"] == 3 and resumed.metadata.training["finished"]
    assert torch.allclose(_weights(resumed), _weights(reference))
    assert not ckpt.with_name(ckpt.name + ".state").exists()
    assert load_model(ckpt).metadata.training["finished"]


def test_fine_tune_adds_a_class(tmp_path):
    img, dense, scrib = blobs()
    base = train(img, scrib, class_names=["background", "blob"], **FAST)
    path = save_model(base, tmp_path / "base.safetensors")
    scrib3 = scrib.copy()
    scrib3[:3, :40] = 3  # a new class painted on the top border
    tuned = train(img, scrib3, model=path, class_names=["background", "blob", "border"], **FAST)
    meta = tuned.metadata
    assert meta.classes == 3 and meta.class_names[2] == "border"
    assert meta.class_names[:2] == ["background", "blob"]
    assert meta.class_colors[:2] == base.metadata.class_colors
    assert meta.normalization == base.metadata.normalization  # kept from the base model
    assert meta.training["fine_tuned_from"]["classes"] == 2
    assert tuned(torch.zeros(1, 1, 64, 64)).shape[1] == 3
    assert base.metadata.classes == 2  # the given model is not modified


def test_fine_tune_does_not_modify_the_given_model():
    img, _, scrib = blobs()
    base = train(img, scrib, **FAST)
    before = _weights(base).clone()
    train(img, scrib, model=base, **FAST)
    assert torch.equal(_weights(base), before)


def test_multichannel_stack_and_lists():
    a, _, sa = blobs(0, channels=3)
    b, _, sb = blobs(1, channels=3)
    model = train([a, b], [sa, sb], **FAST)
    assert model.metadata.in_channels == 3
    assert model.metadata.channel_names == ["red", "green", "blue"]
    stack = np.stack([blobs(i)[0] for i in range(3)])
    labels = np.zeros(stack.shape, np.uint8)
    labels[1] = blobs(1)[2]
    model = train(stack, labels, **FAST)  # a Z stack with one annotated slice
    assert model.metadata.in_channels == 1


def test_dense_masks_and_lazy_tiffs(tmp_path):
    import tifffile

    img, dense, _ = blobs()
    tifffile.imwrite(tmp_path / "img.tif", img, tile=(32, 32))
    tifffile.imwrite(tmp_path / "lab.tif", dense)
    model = train(str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"), **FAST)
    assert model.metadata.training["images"][0]["path"].endswith("img.tif")
    assert sum(model.metadata.training["annotated_pixels"].values()) == dense.size
