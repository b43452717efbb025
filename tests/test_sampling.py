"""Annotation scan, split by region, and patch sampling that reads only windows."""

from __future__ import annotations

import numpy as np

from napari_semseg.core.io import ImageSource
from napari_semseg.core.sampling import PatchSampler, scan_annotations, split_blocks


class RecordingArray:
    """An array that records every window read from it (to check that reads are local)."""

    def __init__(self, data):
        self.data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads = []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.data[key]


def _labels(h=256, w=256):
    lab = np.zeros((h, w), np.uint8)
    lab[10:14, 10:200] = 1        # a stroke of class 1 in the top blocks
    lab[200:203, 30:90] = 2       # class 2 at the bottom left
    lab[120:180, 150:156] = 3     # class 3 in the middle right
    lab[60:62, 60:70] = 2
    return lab


def test_scan_counts_classes_and_blocks():
    lab = _labels()
    index = scan_annotations([ImageSource(lab, None)], block=64)
    for k in (1, 2, 3):
        assert index.counts[k] == (lab == k).sum()
        assert len(index.points[k]) == (lab == k).sum()
    assert index.max_label == 3 and index.classes_present == [1, 2, 3]
    total = sum(c[1:].sum() for c in index.block_counts.values())
    assert total == (lab > 0).sum()
    assert (0, 0, 0, 0) in index.block_counts and (0, 0, 3, 0) in index.block_counts


def test_scan_bounds_the_points_it_keeps():
    lab = np.ones((300, 300), np.uint8)
    lab[:, 150:] = 2
    index = scan_annotations([ImageSource(lab, None)], block=64, max_points=1000)
    assert index.counts[1] == 45000
    assert len(index.points[1]) <= 2000 and index.weights[1][0] > 1


def test_validation_split_is_by_block_and_keeps_every_class_for_training():
    lab = _labels()
    index = scan_annotations([ImageSource(lab, None)], block=32)
    val = split_blocks(index, 0.3, seed=0)
    assert val
    held = sum(index.block_counts[b] for b in val)
    for k in (1, 2, 3):
        assert held[k] <= index.counts[k] / 2
    assert split_blocks(index, 0.3, seed=0) == val  # reproducible
    assert split_blocks(index, 0.0) == set()
    # an earlier split is kept when annotations change
    assert val <= split_blocks(index, 0.3, seed=5, keep=val)


def test_patches_centre_on_annotations_and_hide_validation_labels():
    lab = _labels()
    img = np.arange(256 * 256, dtype=np.float32).reshape(256, 256)
    index = scan_annotations([ImageSource(lab, None)], block=32)
    val = split_blocks(index, 0.3, seed=0)
    sampler = PatchSampler([ImageSource(img, None)], [ImageSource(lab, None)], index, val,
                           np.random.default_rng(0))
    seen = set()
    for _ in range(60):
        patch, plab = sampler.read(48, jitter=0.0)
        assert patch.shape == (1, 48, 48) and plab.shape == (48, 48)
        y0, x0 = divmod(int(patch[0, 0, 0]), 256)
        # labels equal the annotations of that window, except inside validation blocks
        ref = lab[y0:y0 + 48, x0:x0 + 48].astype(np.int64)
        for y in range(48):
            for x in range(48):
                if (0, 0, (y0 + y) // 32, (x0 + x) // 32) in val:
                    ref[y, x] = 0
        assert np.array_equal(plab, ref)
        assert plab.any()
        seen.update(np.unique(plab[plab > 0]).tolist())
    assert seen == {1, 2, 3}  # classes are balanced: the small ones are sampled too


def test_patch_reads_only_windows_of_a_large_image():
    h = w = 2048
    lab = np.zeros((h, w), np.uint8)
    lab[1000:1004, 1000:1100] = 1
    lab[1500:1504, 300:400] = 2
    data = RecordingArray(np.zeros((h, w), np.uint8))
    index = scan_annotations([ImageSource(lab, None)], block=128)
    sampler = PatchSampler([ImageSource(data, None)], [ImageSource(lab, None)], index, set(),
                           np.random.default_rng(0))
    for _ in range(10):
        sampler.read(64)
    assert len(data.reads) == 10
    for rows, cols in data.reads:
        assert rows.stop - rows.start <= 64 and cols.stop - cols.start <= 64


def test_small_planes_are_padded():
    lab = np.zeros((20, 30), np.uint8)
    lab[5, 5] = 1
    lab[10, 20] = 2
    index = scan_annotations([ImageSource(lab, None)], block=32)
    sampler = PatchSampler([ImageSource(np.ones((3, 20, 30), np.float32), 0)],
                           [ImageSource(lab, None)], index, set(), np.random.default_rng(0))
    patch, plab = sampler.read(64)
    assert patch.shape == (3, 64, 64) and plab.shape == (64, 64)
    assert (plab > 0).sum() == 2
