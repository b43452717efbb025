"""build_model / save_model / load_model: architectures, metadata, safe loading."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
import torch

from napari_semseg import build_model, load_model, read_metadata, save_model
from napari_semseg.core.errors import SemSegError
from napari_semseg.core.normalize import Normalization


@pytest.mark.parametrize("arch", ["unet", "unetplusplus", "fpn", "deeplabv3plus", "segformer"])
def test_architectures_build_and_run(arch):
    model = build_model(arch, "resnet18", in_channels=2, classes=4)
    with torch.no_grad():
        out = model(torch.randn(1, 2, 64, 96))
    assert out.shape == (1, 4, 64, 96)
    assert model.metadata.arch == arch and model.metadata.stride == 32


def test_other_encoder_and_metadata_defaults():
    model = build_model("unet", "mobilenet_v2", in_channels=3, classes=2)
    meta = model.metadata
    assert meta.encoder == "mobilenet_v2"
    assert meta.class_names == ["class 1", "class 2"]
    assert len(meta.class_colors) == 2 and all(c.startswith("#") for c in meta.class_colors)
    assert meta.channel_names == ["channel 0", "channel 1", "channel 2"]
    assert "torch" in meta.versions


def test_save_load_roundtrip_keeps_weights_and_metadata(tmp_path, tiny_model):
    tiny_model.metadata.normalization = Normalization("meanstd", [10.0], [0.5])
    tiny_model.metadata.class_names = ["bg", "cell", "edge"]
    tiny_model.metadata.training = {"epochs": 3}
    path = save_model(tiny_model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tiny_model(x), loaded(x), atol=1e-6)
    assert loaded.metadata.class_names == ["bg", "cell", "edge"]
    assert loaded.metadata.normalization == Normalization("meanstd", [10.0], [0.5])
    assert loaded.metadata.training == {"epochs": 3}
    assert loaded.metadata.arch_kwargs["encoder_depth"] == 3
    assert read_metadata(path).classes == 3


def test_half_precision_file_is_smaller_and_close(tmp_path, tiny_model):
    full = save_model(tiny_model, tmp_path / "full.safetensors")
    half = save_model(tiny_model, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        a, b = tiny_model(x), load_model(half)(x)
    assert b.dtype == torch.float32
    assert torch.allclose(a, b, atol=5e-2)


def test_saved_file_gets_the_users_usual_permissions(tmp_path, tiny_model):
    import os

    umask = os.umask(0o022)
    try:
        path = save_model(tiny_model, tmp_path / "m.safetensors")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_save_refuses_existing_file_without_overwrite(tmp_path, tiny_model):
    path = save_model(tiny_model, tmp_path / "m.safetensors")
    with pytest.raises(SemSegError, match="exists"):
        save_model(tiny_model, path, overwrite=False)


def test_unknown_architecture_and_encoder_are_clear_errors():
    with pytest.raises(SemSegError, match="unknown architecture 'unetz'"):
        build_model("unetz")
    with pytest.raises(SemSegError, match="unknown encoder"):
        build_model("unet", "resnet9000")
    with pytest.raises(SemSegError, match="at least 2 classes"):
        build_model(classes=1)


def test_architectures_come_from_smps_registry():
    from napari_semseg.core.models import ARCHITECTURES, architectures, import_smp

    smp = import_smp()
    known = architectures()
    assert set(ARCHITECTURES) == set(known)  # the widget's list is the builder's list
    assert {"unet", "unetplusplus", "fpn", "deeplabv3plus", "segformer"} <= set(known)
    assert all(getattr(smp, cls.__name__) is cls for cls in known.values())
    model = build_model("Unet_PlusPlus", "resnet18", encoder_depth=3, decoder_channels=(16, 8, 8))
    assert isinstance(model.net, known["unetplusplus"])


def test_load_rejects_pickle_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('pwned')" % str(tmp_path / "pwned"),))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"state": Boom()}))
    with pytest.raises(SemSegError, match="not a napari-semseg model file"):
        load_model(path)
    assert not (tmp_path / "pwned").exists()


def test_load_rejects_torch_save_file(tmp_path, tiny_model):
    path = tmp_path / "model.pt"
    torch.save(tiny_model.net.state_dict(), path)
    with pytest.raises(SemSegError, match="not a napari-semseg model file"):
        load_model(path)


def test_load_rejects_random_bytes_and_missing_file(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(SemSegError, match="not a napari-semseg model file"):
        load_model(path)
    with pytest.raises(SemSegError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")


def test_load_rejects_safetensors_without_metadata(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(SemSegError, match="no napari-semseg metadata"):
        load_model(path)


def test_load_rejects_weights_that_do_not_fit(tmp_path, tiny_model):
    path = save_model(tiny_model, tmp_path / "m.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header["__metadata__"]["napari_semseg"])
    meta["classes"] = 5
    meta["class_names"], meta["class_colors"] = [], []
    header["__metadata__"]["napari_semseg"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    with pytest.raises(SemSegError, match="weights do not match"):
        load_model(path)
