"""Pretrained encoder starts: bundled safetensors weights, local files and smp's own download.

A *start* is a set of encoder weights a new model begins from (``build_model(...,
encoder_weights=...)``):

- ``None``: random initialisation (nothing is read or downloaded);
- a bundled name (see :func:`list_starts`): fp16 safetensors shipped inside the package, with a
  provenance and licence note beside each file; no network;
- a path to a ``.safetensors`` file of encoder weights (keys as the smp encoder's
  ``state_dict``, optionally prefixed ``encoder.`` as in a napari-semseg model file); its keys
  and shapes are checked against the encoder before anything is loaded, and it is never
  unpickled;
- ``"imagenet"`` (or another smp weight name for the encoder): smp's own download from the
  Hugging Face hub, for users who are online. Offline, it fails at once with a line naming the
  bundled alternatives.

Starts hold weights for 3 input channels (RGB). 1-channel and N-channel models adapt the first
convolution exactly as smp does for its own weights (``patch_first_conv``: summed for one
channel, cycled and rescaled for more). Each start records the input statistics it expects
(ImageNet mean/std on a 0-1 intensity scale); :func:`start_normalization` folds them into a
training normalization so the network sees inputs on the scale it was pretrained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._triton_guard import preload_triton
from .errors import SemSegError
from .normalize import Normalization

START_KEY = "napari_semseg_start"
MODEL_KEY = "napari_semseg"
MANIFEST = "manifest.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_START_BYTES = 2 * 2**30
HUB_HOST = ("huggingface.co", 443)


def weights_dir() -> Path:
    """The folder of the bundled starts (``napari_semseg/weights``)."""
    return Path(__file__).resolve().parents[1] / "weights"


@dataclass(frozen=True)
class BundledStart:
    """One set of encoder weights shipped with the package (an entry of ``manifest.json``)."""

    name: str
    encoder: str
    file: str
    sha256: str
    size_bytes: int
    origin: str
    licence: str
    description: str
    note: str
    input_mean: tuple[float, ...] = IMAGENET_MEAN
    input_std: tuple[float, ...] = IMAGENET_STD
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return weights_dir() / self.file

    @property
    def note_path(self) -> Path:
        return weights_dir() / self.note


def list_starts() -> list[BundledStart]:
    """The bundled starts with their provenance (encoder, origin, licence, sha256, note file)."""
    manifest = weights_dir() / MANIFEST
    if not manifest.exists():
        return []
    entries = json.loads(manifest.read_text())
    known = set(BundledStart.__dataclass_fields__)
    starts = []
    for name, entry in sorted(entries.items()):
        fields_ = {k: v for k, v in entry.items() if k in known}
        for key in ("input_mean", "input_std"):
            if key in fields_:
                fields_[key] = tuple(fields_[key])
        starts.append(BundledStart(name=name, **fields_))
    return starts


def _bundled_names(encoder: str | None = None) -> str:
    names = [s.name for s in list_starts() if encoder is None or s.encoder == encoder]
    return ", ".join(names) if names else "none"


@dataclass(frozen=True)
class Start:
    """A resolved and checked start: where the weights are and what they expect as input."""

    name: str
    kind: str
    path: Path
    sha256: str
    encoder: str
    origin: str
    licence: str
    input_mean: tuple[float, ...]
    input_std: tuple[float, ...]
    prefix: str = ""
    in_channels: int = 3

    def metadata(self) -> dict[str, Any]:
        """The record stored in the model's metadata (``ModelMetadata.start``)."""
        return {"name": self.name, "kind": self.kind, "file": self.path.name,
                "sha256": self.sha256, "encoder": self.encoder, "origin": self.origin,
                "licence": self.licence, "input_mean": list(self.input_mean),
                "input_std": list(self.input_std)}


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _smp():
    preload_triton()
    import segmentation_models_pytorch as smp

    return smp


def reference_encoder(encoder: str, depth: int = 5, in_channels: int = 3) -> nn.Module:
    """A randomly initialised smp encoder, the yardstick for the keys and shapes of a start."""
    smp = _smp()
    if encoder not in smp.encoders.get_encoder_names() and not encoder.startswith("tu-"):
        raise SemSegError(f"unknown encoder '{encoder}'; see "
                          "segmentation_models_pytorch.encoders.get_encoder_names()")
    try:
        return smp.encoders.get_encoder(encoder, in_channels=in_channels, depth=depth, weights=None)
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise SemSegError(f"cannot build encoder {encoder}: {exc}".splitlines()[0]) from None


def first_conv_key(encoder_module: nn.Module) -> str:
    """State-dict key of the first 3-channel convolution (the one smp adapts to other inputs)."""
    for name, module in encoder_module.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return f"{name}.weight"
    raise SemSegError("the encoder has no 3-channel first convolution to adapt")


def resolve_start(encoder_weights: str | os.PathLike | None, encoder: str, depth: int = 5,
                  in_channels: int | None = None) -> Start | None:
    """Find and check the weights ``encoder_weights`` names for ``encoder`` (and a model of
    ``in_channels`` inputs); nothing is loaded.

    Raises
    ------
    SemSegError
        One line: unknown name, bundled start of another encoder, missing or unreadable file,
        not a safetensors file, weights of another encoder (missing keys or wrong shapes), or
        no network for a download.
    """
    if encoder_weights is None:
        return None
    if not isinstance(encoder_weights, (str, os.PathLike)):
        raise SemSegError(f"encoder_weights must be None, a bundled name, 'imagenet' or a file "
                          f"path, got {type(encoder_weights).__name__}")
    text = os.fspath(encoder_weights)
    bundled = {s.name: s for s in list_starts()}
    if isinstance(encoder_weights, str) and text in bundled:
        start = _bundled_start(bundled[text], encoder)
    elif isinstance(encoder_weights, str) and text in _smp_weight_names(encoder):
        start = _downloaded_start(text, encoder)
    else:
        start = _file_start(Path(text).expanduser(), encoder)
    start = check_start(start, encoder, depth)
    if in_channels is not None and start.in_channels not in (3, in_channels):
        raise SemSegError(_channel_mismatch(start, in_channels))
    return start


def _channel_mismatch(start: Start, in_channels: int) -> str:
    return (f"encoder_weights '{start.name}' are for {start.in_channels} input channels; the "
            f"model has {in_channels} (only 3-channel weights adapt to other counts)")


def _bundled_start(entry: BundledStart, encoder: str) -> Start:
    if entry.encoder != encoder:
        raise SemSegError(f"bundled start '{entry.name}' is for encoder {entry.encoder}, not "
                          f"{encoder}; use encoder {entry.encoder} or one of: "
                          f"{_bundled_names(encoder)}")
    if not entry.path.exists():
        raise SemSegError(f"bundled start '{entry.name}' is missing from the installation "
                          f"({entry.path}); reinstall napari-semseg")
    digest = sha256_of(entry.path)
    if digest != entry.sha256:
        raise SemSegError(f"bundled start '{entry.name}' is damaged (sha256 {digest[:12]}... "
                          f"instead of {entry.sha256[:12]}...); reinstall napari-semseg")
    return Start(name=entry.name, kind="bundled", path=entry.path, sha256=digest,
                 encoder=entry.encoder, origin=entry.origin, licence=entry.licence,
                 input_mean=entry.input_mean, input_std=entry.input_std)


def _file_start(path: Path, encoder: str) -> Start:
    if not path.exists():
        raise SemSegError(f"encoder_weights '{path}' is neither a bundled start "
                          f"({_bundled_names()}), nor 'imagenet', nor an existing file")
    if path.is_dir() or path.stat().st_size > MAX_START_BYTES:
        raise SemSegError(f"encoder_weights '{path}' is not a .safetensors file of encoder "
                          "weights")
    info = _header(path)[1]
    mean = tuple(info.get("input_mean", IMAGENET_MEAN))
    std = tuple(info.get("input_std", IMAGENET_STD))
    return Start(name=str(path), kind="file", path=path, sha256=sha256_of(path),
                 encoder=encoder, origin=str(info.get("origin", f"local file {path.name}")),
                 licence=str(info.get("licence", "unknown (local file)")),
                 input_mean=mean, input_std=std)


def _header(path: Path) -> tuple[dict[str, list[int]], dict[str, Any]]:
    """Tensor shapes and start/model metadata of a safetensors file, without loading tensors."""
    from safetensors import safe_open

    hint = (f"encoder_weights '{path}' is not a safetensors file (napari-semseg never unpickles "
            "weights; convert .pth/.pt files with safetensors.torch.save_file)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            shapes = {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
            meta = fh.metadata() or {}
    except Exception as exc:
        raise SemSegError(hint) from exc
    info: dict[str, Any] = {}
    for key in (START_KEY, MODEL_KEY):
        try:
            info = info or json.loads(meta.get(key, "{}"))
        except json.JSONDecodeError:
            continue
    return shapes, info if isinstance(info, dict) else {}


def _smp_weight_names(encoder: str) -> set[str]:
    if encoder.startswith("tu-"):
        return {"imagenet"}
    settings = _smp().encoders.encoders.get(encoder, {}).get("pretrained_settings", {})
    return set(settings) | {"imagenet"}


def _offline_error(name: str, encoder: str, reason: str) -> SemSegError:
    return SemSegError(f"cannot download the '{name}' weights of {encoder} ({reason}); offline, "
                       f"use a bundled start instead: {_bundled_names()} (encoder "
                       "mobilenet_v2), or a local .safetensors file")


def _hub_reachable() -> bool:
    """Whether the Hugging Face hub answers on its port (skipped behind an HTTP(S) proxy)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(HUB_HOST, timeout=3).close()
    except OSError:
        return False
    return True


def _downloaded_start(name: str, encoder: str) -> Start:
    smp = _smp()
    if encoder.startswith("tu-"):
        raise SemSegError(f"timm ('tu-') encoders download their weights through timm, which "
                          f"napari-semseg does not use; give {encoder}'s weights as a local "
                          ".safetensors file, or choose an smp encoder such as mobilenet_v2")
    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {})
    if name not in settings:
        raise SemSegError(f"smp has no '{name}' weights for encoder {encoder}; choose None, a "
                          f"bundled start ({_bundled_names()}) or a local .safetensors file")
    repo, revision = settings[name]["repo_id"], settings[name]["revision"]
    files = {}
    for filename in ("config.json", "model.safetensors"):
        try:
            files[filename] = Path(smp.encoders.hf_hub_download(
                repo, filename=filename, revision=revision, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached: download below
            if not _hub_reachable():
                raise _offline_error(name, encoder, "no network") from None
            try:
                files[filename] = Path(smp.encoders.hf_hub_download(
                    repo, filename=filename, revision=revision))
            except Exception as exc:  # noqa: BLE001 - any hub failure is reported in one line
                raise _offline_error(name, encoder, type(exc).__name__) from None
    mean, std = _hub_input_statistics(files["config.json"])
    path = files["model.safetensors"]
    return Start(name=name, kind="download", path=path, sha256=sha256_of(path), encoder=encoder,
                 origin=f"segmentation-models-pytorch download {repo}@{revision}",
                 licence="see the model card of " + repo, input_mean=mean, input_std=std)


def _hub_input_statistics(config: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std on a 0-1 scale from an smp hub ``config.json``."""
    try:
        cfg = json.loads(config.read_text())
        top = float(cfg.get("input_range", [0, 1])[1])
        return (tuple(float(m) / top for m in cfg["mean"]),
                tuple(float(s) / top for s in cfg["std"]))
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return IMAGENET_MEAN, IMAGENET_STD


def check_start(start: Start, encoder: str, depth: int = 5) -> Start:
    """Check the keys and shapes of ``start`` against ``encoder``; return it with the key prefix
    and input channel count filled in."""
    shapes, info = _header(start.path)
    reference = reference_encoder(encoder, depth)
    expected = {k: list(v.shape) for k, v in reference.state_dict().items()}
    prefix = "encoder." if not set(expected) & set(shapes) else ""
    found = {k: shapes.get(prefix + k) for k in expected}
    missing = [k for k, v in found.items() if v is None]
    if missing:
        said = info.get("encoder")
        hint = f" (the file says encoder {said})" if said and said != encoder else ""
        raise SemSegError(f"encoder_weights '{start.name}' do not fit encoder {encoder}{hint}: "
                          f"{len(missing)} of {len(expected)} tensors missing, e.g. {missing[0]}")
    present = {k: v for k, v in found.items() if v is not None}  # all of them (checked above)
    conv = first_conv_key(reference)
    channels = present[conv][1]
    wrong = [k for k, v in present.items() if k != conv and v != expected[k]]
    if present[conv][0] != expected[conv][0] or present[conv][2:] != expected[conv][2:]:
        wrong.insert(0, conv)
    if wrong:
        raise SemSegError(f"encoder_weights '{start.name}' do not fit encoder {encoder}: "
                          f"{len(wrong)} tensors of the wrong shape, e.g. {wrong[0]} "
                          f"{present[wrong[0]]} instead of {expected[wrong[0]]}")
    return Start(**{**start.__dict__, "prefix": prefix, "in_channels": int(channels)})


def load_start(encoder_module: nn.Module, start: Start, encoder: str, in_channels: int,
               depth: int = 5) -> None:
    """Copy the weights of a checked ``start`` into ``encoder_module`` (built for
    ``in_channels``), adapting the first convolution the way smp does for its own weights."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(start.path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - checked before; only a changed file lands here
        raise SemSegError(f"encoder_weights '{start.name}' cannot be read: {exc}"
                          .splitlines()[0]) from None
    if start.in_channels == in_channels:
        target = encoder_module
    elif start.in_channels == 3:
        target = reference_encoder(encoder, depth)
    else:
        raise SemSegError(_channel_mismatch(start, in_channels))
    reference = target.state_dict()
    state = {k: tensors[start.prefix + k].to(v.dtype) for k, v in reference.items()}
    target.load_state_dict(state, strict=True)
    if target is not encoder_module:
        # a method of smp's EncoderMixin; smp ships no type information
        target.set_in_channels(in_channels, pretrained=True)  # type: ignore[operator]
        encoder_module.load_state_dict(target.state_dict(), strict=True)


def channel_statistics(start: dict[str, Any], in_channels: int
                       ) -> tuple[list[float], list[float]]:
    """Per-channel input mean and std a start expects for ``in_channels`` inputs.

    Three channels use the start's RGB statistics; one channel their averages (its convolution
    weights are the sum over RGB); other counts cycle through RGB as ``patch_first_conv`` does.
    """
    mean, std = list(start["input_mean"]), list(start["input_std"])
    if in_channels == len(mean):
        return mean, std
    if in_channels == 1:
        return [sum(mean) / len(mean)], [sum(std) / len(std)]
    return ([mean[c % len(mean)] for c in range(in_channels)],
            [std[c % len(std)] for c in range(in_channels)])


def start_normalization(norm: Normalization | None, start: dict[str, Any] | None,
                        ) -> Normalization | None:
    """Fold the start's input statistics into a percentile normalization.

    A percentile normalization maps the image to about 0-1; the start expects
    ``(x01 - mean) / std`` per channel, so offset and scale are composed into one affine map
    (and the clip range moved with them). ``meanstd`` (already standardised) and ``none``
    normalizations, and models without a start, are returned unchanged.
    """
    if norm is None or start is None or norm.mode != "percentile" or not norm.offset:
        return norm
    n = len(norm.offset)
    mean, std = channel_statistics(start, n)
    offset = [o + m / s for o, m, s in zip(norm.offset, mean, norm.scale, strict=True)]
    scale = [s / d for s, d in zip(norm.scale, std, strict=True)]
    clip = None
    if norm.clip is not None:
        lows = [(norm.clip[0] - m) / d for m, d in zip(mean, std, strict=True)]
        highs = [(norm.clip[1] - m) / d for m, d in zip(mean, std, strict=True)]
        clip = [min(lows), max(highs)]
    return Normalization(mode="percentile", offset=offset, scale=scale, clip=clip,
                         low=norm.low, high=norm.high)


def write_start(state: dict[str, torch.Tensor], path: str | os.PathLike, *, encoder: str,
                origin: str, licence: str, input_mean: tuple[float, ...] = IMAGENET_MEAN,
                input_std: tuple[float, ...] = IMAGENET_STD, half: bool = True,
                extra: dict[str, Any] | None = None) -> str:
    """Write encoder weights as a start file (safetensors, fp16 by default); return its sha256.

    The header records the encoder, origin, licence and expected input statistics, so the file
    describes itself when given as ``encoder_weights=path``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    info = {"encoder": encoder, "origin": origin, "licence": licence,
            "input_mean": list(input_mean), "input_std": list(input_std), **(extra or {})}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={START_KEY: json.dumps(info, sort_keys=True)})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors creates 0600 files; use the user's usual mode
    os.replace(tmp, path)
    return sha256_of(path)


def save_encoder(model: nn.Module, path: str | os.PathLike, *, origin: str,
                 licence: str = "unknown") -> str:
    """Write the encoder of a napari-semseg model as a start file for other models."""
    meta = getattr(model, "metadata", None)
    net = getattr(model, "net", None)
    if meta is None or net is None or not hasattr(net, "encoder"):
        raise SemSegError("save_encoder expects a model from build_model, train or load_model")
    if meta.in_channels != 3:
        raise SemSegError(f"only 3-channel encoders make starts; this model has "
                          f"{meta.in_channels} input channels")
    start = getattr(meta, "start", None) or {}
    return write_start(net.encoder.state_dict(), path, encoder=meta.encoder, origin=origin,
                       licence=licence,
                       input_mean=tuple(start.get("input_mean", IMAGENET_MEAN)),
                       input_std=tuple(start.get("input_std", IMAGENET_STD)))
