"""Augmentations keep labels consistent with images (dense and sparse)."""

from __future__ import annotations

import torch

from napari_semseg.core.augment import (AugmentConfig, augment_batch, cutmix, draw_zoom,
                                        flip_rotate, intensity, rescale)


def _coded_batch(b=6, size=16, sparse=True, seed=0):
    """Images whose pixel value encodes the label: label = value // 100 (0 = not annotated)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(1, 4, (b, size, size), generator=g)
    if sparse:
        labels[torch.rand(b, size, size, generator=g) < 0.8] = 0
    noise = torch.randint(0, 100, (b, size, size), generator=g)
    images = (labels * 100 + noise).float()[:, None]
    return images, labels


def _consistent(images, labels):
    return torch.equal((images[:, 0] // 100).long(), labels)


def test_flips_and_rotations_move_labels_with_images():
    images, labels = _coded_batch()
    out_i, out_l = flip_rotate(images, labels, torch.Generator().manual_seed(1))
    assert _consistent(out_i, out_l)
    assert not torch.equal(out_l, labels)  # something was transformed
    # every output sample is one of the 8 symmetries of its input
    for k in range(images.shape[0]):
        variants = []
        for t in (labels[k], labels[k].T):
            for f in (t, t.flip(0), t.flip(1), t.flip(0).flip(1)):
                variants.append(f)
        assert any(torch.equal(out_l[k], v) for v in variants)


def test_cutmix_pastes_the_same_box_into_image_and_sparse_labels():
    images, labels = _coded_batch(sparse=True)
    out_i, out_l = cutmix(images, labels, 1.0, torch.Generator().manual_seed(2))
    assert _consistent(out_i, out_l)  # every annotated pixel still shows its own class
    assert not torch.equal(out_i, images)
    # unannotated pixels stay unannotated where pasted from an unannotated source pixel
    assert (out_l == 0).float().mean() > 0.5


def test_cutmix_never_applies_with_probability_zero():
    images, labels = _coded_batch()
    out_i, out_l = cutmix(images, labels, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(out_i, images) and torch.equal(out_l, labels)


def test_rescale_uses_nearest_labels():
    images, labels = _coded_batch(size=20)
    out_i, out_l = rescale(images, labels, 32)
    assert out_i.shape[-2:] == (32, 32) and out_l.shape[-2:] == (32, 32)
    assert set(out_l.unique().tolist()) <= set(labels.unique().tolist())
    assert out_l.dtype == labels.dtype


def test_intensity_changes_images_only_and_is_reproducible():
    images, labels = _coded_batch()
    x = images / 400.0
    cfg = AugmentConfig(intensity_p=1.0, blur=1.0)
    a = intensity(x, cfg, torch.Generator().manual_seed(3))
    b = intensity(x, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.allclose(a, x)
    assert torch.isfinite(a).all()


def test_full_pipeline_keeps_shapes_and_label_values():
    images, labels = _coded_batch()
    cfg = AugmentConfig()
    out_i, out_l = augment_batch(images / 400, labels, cfg, torch.Generator().manual_seed(4))
    assert out_i.shape == images.shape and out_l.shape == labels.shape
    assert set(out_l.unique().tolist()) <= {0, 1, 2, 3}
    zooms = {round(draw_zoom(cfg, torch.Generator().manual_seed(s)), 3) for s in range(20)}
    assert len(zooms) > 10 and all(1 / 1.25 - 1e-6 <= z <= 1.25 + 1e-6 for z in zooms)
