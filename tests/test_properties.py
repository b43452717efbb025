"""Property-based tests (hypothesis) over settings, array shapes and dtypes, and damaged files:
every outcome is either a correct result or one SemSegError line, never another exception."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import tifffile

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from napari_semseg import segment  # noqa: E402
from napari_semseg.core.errors import SemSegError  # noqa: E402
from napari_semseg.core.settings import PredictSettings, TrainSettings, option_fields  # noqa: E402

ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                      st.sampled_from(["auto", "cpu", "none", "1", "entropy", "tta", "0.5"]))
QUICK = settings(max_examples=60, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


def _one_line(exc: SemSegError) -> None:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text


@pytest.mark.parametrize("cls", [PredictSettings, TrainSettings])
@QUICK
@given(data=st.data())
def test_any_option_value_is_accepted_or_refused_in_one_line(cls, data):
    name = data.draw(st.sampled_from(sorted(option_fields(cls))))
    value = data.draw(ANY_VALUE)
    try:
        cls(**{name: value}).validated()
    except SemSegError as exc:
        _one_line(exc)
        assert name.replace("_", "-") in str(exc) or name in str(exc) or "--" in str(exc)


DTYPES = st.sampled_from(["uint8", "uint16", "int8", "float32", "float64", "bool"])


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(1, 90), w=st.integers(1, 90), dtype=DTYPES, seed=st.integers(0, 3))
def test_segment_any_small_array_gives_labels_or_one_line(tiny_model, h, w, dtype, seed):
    rng = np.random.default_rng(seed)
    image = (rng.random((h, w)) * 200).astype(dtype)
    try:
        result = segment(image, tiny_model, tile=64, overlap=16, device="cpu")
    except SemSegError as exc:
        _one_line(exc)
        assert min(h, w) < 2  # only empty or 1-pixel images are refused
        return
    labels = np.asarray(result.labels)
    assert labels.shape == (h, w)
    assert labels.min() >= 1 and labels.max() <= tiny_model.metadata.classes


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(8, 80), w=st.integers(8, 80), top=st.integers(0, 300),
       painted=st.integers(0, 40), seed=st.integers(0, 5))
def test_train_any_small_annotation_gives_a_model_or_one_line(h, w, top, painted, seed):
    from napari_semseg.core.train import iter_train

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (h, w)).astype(np.uint8)
    labels = np.zeros((h, w), np.uint16)
    if painted and top:
        ys, xs = rng.integers(0, h, painted), rng.integers(0, w, painted)
        labels[ys, xs] = rng.integers(1, top + 1, painted)
    try:
        job = iter_train(image, labels, device="cpu", epochs=1, steps_per_epoch=1,
                         patch_size=32, batch_size=2, encoder_depth=3,
                         decoder_channels="16,8,8", encoder_weights=None)
    except SemSegError as exc:
        _one_line(exc)
        return
    for _ in job:
        pass


def _tiff_bytes(seed: int) -> bytes:
    import io

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.random.default_rng(seed).integers(0, 255, (96, 80), np.uint8),
                     tile=(32, 32) if seed % 2 else None)
    return buf.getvalue()


@QUICK
@given(seed=st.integers(0, 3), cut=st.floats(0.0, 1.0), flips=st.integers(0, 6),
       flip_seed=st.integers(0, 1000))
def test_damaged_tiffs_are_read_right_or_refused_in_one_line(tmp_path_factory, tiny_model,
                                                             seed, cut, flips, flip_seed):
    data = bytearray(_tiff_bytes(seed))
    data = data[:max(0, int(len(data) * cut))] if cut < 1 else data
    rng = np.random.default_rng(flip_seed)
    for _ in range(flips if data else 0):
        data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
    path = tmp_path_factory.mktemp("corpus") / "damaged.tif"
    path.write_bytes(bytes(data))
    try:
        result = segment(path, tiny_model, tile=64, overlap=16, device="cpu")
    except SemSegError as exc:
        _one_line(exc)
        return
    assert np.asarray(result.labels).ndim >= 2


@QUICK
@given(header=st.one_of(
    st.binary(max_size=64),
    st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), st.integers()),
                    max_size=4).map(lambda d: json.dumps(d).encode()),
    st.just(json.dumps({"__metadata__": {"napari_semseg": "[1, 2]"}}).encode()),
    st.just(json.dumps({"__metadata__": {"napari_semseg": "{\"classes\": -3}"}}).encode())))
def test_random_model_files_are_refused_in_one_line(tmp_path_factory, header):
    from napari_semseg import load_model

    path = tmp_path_factory.mktemp("models") / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(SemSegError) as info:
        load_model(path)
    _one_line(info.value)
