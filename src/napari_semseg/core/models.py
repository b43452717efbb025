"""Models: smp networks that carry their own metadata, saved as safetensors + JSON.

A model file is one ``.safetensors`` file: the weights as tensors and, in the safetensors header's
string metadata, one JSON document (key ``napari_semseg``) describing architecture, encoder,
channels, classes and colours, normalization statistics, tile and halo, training provenance and
package versions. Loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._triton_guard import preload_triton
from .constants import METADATA_KEY, PALETTE
from .errors import SemSegError
from .io import check_regular
from .model_schema import metadata_problem
from .first_answer.net import FeatureHeadNet, feature_head_stride
from .normalize import Normalization
from .pretrained import Start, load_start, resolve_start

FORMAT = "napari-semseg/1"




def import_smp():
    """Import segmentation-models-pytorch safely (triton first, with RTLD_DEEPBIND) and return it.

    Use this instead of ``import segmentation_models_pytorch`` in code that may run after a napari
    viewer (an OpenGL context) exists.
    """
    preload_triton()
    import segmentation_models_pytorch as smp

    return smp


UNET_FAMILY = ("unet", "unetplusplus", "manet")  # take encoder_depth and decoder_channels


def architectures() -> dict[str, type]:
    """The architectures segmentation-models-pytorch provides, by lower-case name.

    smp's own registry (``MODEL_ARCHITECTURES_MAPPING``) answers; an smp without it is asked
    for the segmentation-model classes it exports.
    """
    smp = import_smp()
    registry = getattr(smp, "MODEL_ARCHITECTURES_MAPPING", None)
    if registry is None:
        base = smp.base.SegmentationModel
        registry = {name.lower(): cls for name, cls in vars(smp).items()
                    if isinstance(cls, type) and issubclass(cls, base) and cls is not base}
    return dict(registry)


def __getattr__(name: str) -> Any:
    if name == "ARCHITECTURES":  # {name: class name}, from smp's registry (imports smp)
        return {key: cls.__name__ for key, cls in architectures().items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class ModelMetadata:
    """Everything needed to use a model correctly, stored inside the model file.

    Class ``k`` (1-based, as painted in napari) is ``class_names[k - 1]`` and is drawn in
    ``class_colors[k - 1]`` (``#rrggbb``). Channel ``c`` of the input is ``channel_names[c]``.
    """

    arch: str
    encoder: str
    in_channels: int
    classes: int
    channel_names: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    class_colors: list[str] = field(default_factory=list)
    normalization: Normalization | None = None
    tile: int = 1024
    halo: int = 32
    stride: int = 32
    pixel_size: float | None = None
    pixel_unit: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    start: dict[str, Any] | None = None
    format: str = FORMAT

    def __post_init__(self) -> None:
        if not self.channel_names:
            self.channel_names = [f"channel {c}" for c in range(self.in_channels)]
        if not self.class_names:
            self.class_names = [f"class {k}" for k in range(1, self.classes + 1)]
        if not self.class_colors:
            self.class_colors = [
                "#%02x%02x%02x" % PALETTE[(k - 1) % len(PALETTE)] for k in range(1, self.classes + 1)
            ]
        if isinstance(self.normalization, dict):
            self.normalization = Normalization(**self.normalization)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        data = json.loads(text)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class SemSegModel(nn.Module):
    """An smp segmentation network plus its :class:`ModelMetadata`.

    ``model(x)`` returns logits of shape ``(B, classes, H, W)`` for input ``(B, in_channels, H, W)``
    with ``H`` and ``W`` multiples of ``model.metadata.stride``.
    """

    def __init__(self, net: nn.Module, metadata: ModelMetadata) -> None:
        super().__init__()
        self.net = net
        self.metadata = metadata

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def extra_repr(self) -> str:
        m = self.metadata
        return f"arch={m.arch}, encoder={m.encoder}, in_channels={m.in_channels}, classes={m.classes}"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("napari-semseg", "torch", "segmentation-models-pytorch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def arch_key(name: str) -> str:
    """An architecture name as smp's registry spells it ("Unet_PlusPlus" -> "unetplusplus")."""
    return name.lower().replace("_", "").replace("-", "")


FEATURE_HEAD = "featurehead"  # frozen pretrained features + a light head (first_answer/)


def _make_feature_head(meta: ModelMetadata, encoder_weights: str | None) -> nn.Module:
    if encoder_weights is not None:
        raise SemSegError("a feature-head model gets its encoder weights from "
                          "FeatureHeadNet.load_encoder_state (see fit_feature_head)")
    try:
        return FeatureHeadNet(meta.in_channels, meta.classes, **meta.arch_kwargs)
    except (TypeError, ValueError) as exc:
        raise SemSegError(f"cannot build a feature-head model: {exc}") from exc


def _make_net(meta: ModelMetadata, encoder_weights: str | None = None) -> nn.Module:
    key = arch_key(meta.arch)
    if key == FEATURE_HEAD:
        return _make_feature_head(meta, encoder_weights)
    smp = import_smp()
    known = architectures()
    if key not in known:
        raise SemSegError(f"unknown architecture '{meta.arch}'; choose one of "
                          f"{', '.join(sorted(known))}")
    encoders = smp.encoders.get_encoder_names()
    if meta.encoder not in encoders:
        raise SemSegError(f"unknown encoder '{meta.encoder}'; see "
                          "segmentation_models_pytorch.encoders.get_encoder_names()")
    cls = known[key]
    try:
        return cls(encoder_name=meta.encoder, encoder_weights=encoder_weights,
                   in_channels=meta.in_channels, classes=meta.classes, **meta.arch_kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise SemSegError(f"cannot build {meta.arch} with encoder {meta.encoder}: {exc}") from exc


def build_model(
    arch: str = "unet", encoder: str = "resnet18", in_channels: int = 1, classes: int = 2, *,
    encoder_weights: str | os.PathLike | None = None, class_names: list[str] | None = None,
    class_colors: list[str] | None = None, channel_names: list[str] | None = None,
    normalization: Normalization | None = None, tile: int = 1024, halo: int = 32,
    pixel_size: float | None = None, pixel_unit: str | None = None, **arch_kwargs: Any,
) -> SemSegModel:
    """Build a segmentation model over segmentation-models-pytorch.

    Parameters
    ----------
    arch
        Architecture: ``unet``, ``unetplusplus``, ``fpn``, ``deeplabv3plus``, ``segformer``, ...
    encoder
        Any smp encoder name (``resnet18``, ``efficientnet-b0``, ``mit_b0``, ...).
    in_channels, classes
        Number of input channels and of classes (labels 1..classes).
    encoder_weights
        Where the encoder starts: ``None`` (default) random; the name of a bundled start
        (:func:`napari_semseg.core.pretrained.list_starts`, e.g. ``"mobilenet_v2-imagenet"``,
        no network); a path to a ``.safetensors`` file of encoder weights (keys and shapes are
        checked; never unpickled); or ``"imagenet"`` (smp's own download, online only).
        3-channel weights adapt to other channel counts as smp does. The start (name, sha256,
        origin, licence, expected input mean/std) is recorded in ``metadata.start``; fold its
        input statistics into the normalization with
        :func:`napari_semseg.core.pretrained.start_normalization`.
    class_names, class_colors, channel_names
        Names of classes 1..K, their colours (``#rrggbb``), and names of input channels.
    normalization
        Per-channel normalization applied before the network (set by training).
    tile, halo
        Preferred prediction tile edge and the context margin (pixels) the network needs.
    pixel_size, pixel_unit
        Pixel size of the training data, used to rescale inputs of another pixel size.
    **arch_kwargs
        Passed to the smp architecture (e.g. ``encoder_depth``, ``decoder_channels``).

    Returns
    -------
    SemSegModel
        The network in eval mode with its metadata attached as ``model.metadata``.
    """
    _check_counts(in_channels, classes)
    depth = int(arch_kwargs.get("encoder_depth", 5))
    stride = _network_stride(arch, depth, arch_kwargs)
    start = resolve_start(encoder_weights, encoder, depth, in_channels)
    meta = ModelMetadata(
        arch=arch.lower(), encoder=encoder, in_channels=in_channels, classes=classes,
        channel_names=list(channel_names or []), class_names=list(class_names or []),
        class_colors=list(class_colors or []), normalization=normalization,
        tile=int(tile), halo=int(halo), stride=stride, pixel_size=pixel_size,
        pixel_unit=pixel_unit, arch_kwargs=dict(arch_kwargs), versions=_versions(),
        start=start.metadata() if start is not None else None,
    )
    _check_name_lists(meta)
    model = SemSegModel(_make_net(meta), meta)
    if start is not None:
        _load_encoder_start(model, start, depth)
    return model.eval()


def _network_stride(arch: str, depth: int, arch_kwargs: dict[str, Any]) -> int:
    """Input height and width multiple the network needs: ``2 ** depth`` for smp networks."""
    if arch_key(arch) == FEATURE_HEAD:
        return feature_head_stride(**arch_kwargs)
    return 2 ** depth


def _check_counts(in_channels: int, classes: int) -> None:
    """Raise unless there is at least one input channel and two classes."""
    if in_channels < 1 or classes < 1:
        raise SemSegError(f"in_channels and classes must be positive, got {in_channels}, {classes}")
    if classes == 1:
        raise SemSegError("semantic segmentation needs at least 2 classes (background and one more)")


def _check_name_lists(meta: ModelMetadata) -> None:
    """Raise unless every name list has one entry per class / input channel."""
    for name, values, n in (("class_names", meta.class_names, meta.classes),
                            ("class_colors", meta.class_colors, meta.classes),
                            ("channel_names", meta.channel_names, meta.in_channels)):
        if len(values) != n:
            raise SemSegError(f"{name} has {len(values)} entries but the model has {n}")


def _load_encoder_start(model: SemSegModel, start: Start, depth: int) -> None:
    """Copy the weights of a checked encoder start into the model's encoder."""
    meta = model.metadata
    encoder_module = model.net.encoder
    if not isinstance(encoder_module, nn.Module):
        raise SemSegError(f"{meta.arch} has no encoder to load encoder_weights into")
    load_start(encoder_module, start, meta.encoder, meta.in_channels, depth)


def save_model(model: SemSegModel, path: str | os.PathLike, *, overwrite: bool = True,
               half: bool = False) -> Path:
    """Write ``model`` as one ``.safetensors`` file with its JSON metadata in the header.

    The file is written to a temporary name and renamed, so a crash never leaves a half-written
    model under ``path``. ``half=True`` stores floating-point weights as float16 (half the size;
    they are loaded back as float32).
    """
    from safetensors.torch import save_file

    if not isinstance(model, SemSegModel):
        raise SemSegError("save_model expects a model from build_model, train or load_model")
    path = Path(path)
    if path.exists() and not overwrite:
        raise SemSegError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    problem = metadata_problem(model.metadata)
    if problem:
        raise SemSegError(f"cannot save the model to {path}: its metadata is invalid: {problem}")
    model.metadata.versions = _versions()
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.net.state_dict().items()}
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp), metadata={METADATA_KEY: model.metadata.to_json(), "format": FORMAT})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # safetensors creates 0600 files; use the user's usual mode
    os.replace(tmp, path)
    return path


def _read_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header without reading tensors; raise SemSegError if it is not one."""
    hint = (f"{path} is not a napari-semseg model file (expected a .safetensors file written by "
            "save_model or napari-semseg train)")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise SemSegError(hint)
            (n,) = struct.unpack("<Q", head)
            if n <= 1 or n > min(size - 8, 100 * 2**20):
                raise SemSegError(hint)
            header = json.loads(fh.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SemSegError(hint) from exc
    if not isinstance(header, dict):
        raise SemSegError(hint)
    return header


def read_metadata(path: str | os.PathLike) -> ModelMetadata:
    """Read only the metadata of a model file (fast; no weights are loaded)."""
    path = Path(path)
    if not path.exists():
        raise SemSegError(f"model file {path} does not exist")
    if path.is_dir():
        raise SemSegError(f"model path {path} is a folder; give the .safetensors file")
    check_regular(path, "model file")
    header = _read_header(path)
    text = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if text is None:
        raise SemSegError(f"{path} is a safetensors file but has no napari-semseg metadata; "
                          "it was not written by napari-semseg")
    try:
        kind = json.loads(text).get("kind", "segmenter")
        if kind != "segmenter":  # e.g. "generator" (napari_semseg.core.generation)
            raise SemSegError(f"{path} is an image {kind}, not a segmentation model; give a "
                              "segmentation model (a generator is used by synthesize)")
        meta = ModelMetadata.from_json(text)
    except SemSegError:
        raise
    except (json.JSONDecodeError, TypeError, AttributeError, ValueError) as exc:
        raise SemSegError(f"{path} has damaged napari-semseg metadata: {exc}") from exc
    problem = metadata_problem(meta)
    if problem:
        raise SemSegError(f"{path} has invalid napari-semseg metadata: {problem}")
    return meta


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> SemSegModel:
    """Load a model written by :func:`save_model` (safetensors; never unpickles).

    Raises
    ------
    SemSegError
        If the file is missing, not a safetensors file (a pickle, a random file), lacks the
        metadata, or its weights do not fit the architecture it declares.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise SemSegError(f"{path} is damaged: {exc}") from exc
    net = _make_net(meta)
    reference = net.state_dict()
    for k, v in tensors.items():
        if k in reference and reference[k].is_floating_point() and not v.is_floating_point():
            raise SemSegError(f"{path}: weight {k} holds {v.dtype} numbers where "
                              f"{meta.arch}/{meta.encoder} needs floating point; the file was "
                              "not written by napari-semseg or was altered")
    tensors = {k: v.to(reference[k].dtype) if k in reference and v.is_floating_point() else v
               for k, v in tensors.items()}
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise SemSegError(f"{path}: weights do not match {meta.arch}/{meta.encoder}: {first}") from exc
    model = SemSegModel(net, meta).eval()
    from .device import resolve_device

    return model.to(resolve_device(device))


def as_model(model: SemSegModel | str | os.PathLike) -> SemSegModel:
    """Accept a model object or a path to a model file."""
    if isinstance(model, SemSegModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    raise SemSegError(f"expected a model or a model file path, got {type(model).__name__}")


# --------------------------------------------------------------------------- model surgery


def arch_kwargs(arch: str, encoder_depth: int | None = None,
                decoder_channels: str | None = None, *,
                derive_widths: bool = False) -> dict[str, Any]:
    """``encoder_depth`` and ``decoder_channels`` for Unet-family architectures.

    Other architectures use their own defaults (an empty dict is returned).

    Parameters
    ----------
    arch
        Architecture name (any spelling :func:`arch_key` accepts).
    encoder_depth
        Encoder stages (1-5), or None for smp's default of 5.
    decoder_channels
        Comma-separated decoder widths, one per encoder stage.
    derive_widths
        If the widths do not match the depth: derive them from the depth (for widths left at
        their default) instead of refusing them.
    """
    if arch_key(arch) not in UNET_FAMILY:
        return {}
    kw: dict[str, Any] = {}
    if encoder_depth is not None:
        kw["encoder_depth"] = int(encoder_depth)
    if decoder_channels:
        try:
            widths = [int(c) for c in str(decoder_channels).split(",")]
        except ValueError:
            raise SemSegError(f"--decoder-channels must be comma-separated integers, got "
                              f"{decoder_channels!r}") from None
        depth = encoder_depth if encoder_depth is not None else 5
        if len(widths) != depth:
            if not derive_widths:
                raise SemSegError(f"--decoder-channels has {len(widths)} widths but "
                                  f"--encoder-depth is {depth}; give one width per stage")
            widths = [max(16, 64 >> i) for i in range(depth)]
        kw["decoder_channels"] = widths
    return kw


def _pair(values: tuple[int, ...]) -> tuple[int, int]:
    """A 2D convolution's per-axis setting (kernel size, stride...) as the pair it is."""
    return values[0], values[1]


def _head_conv(net: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """The last Conv2d of the segmentation head (the one producing class logits)."""
    head = getattr(net, "segmentation_head", None)
    if head is None:
        raise SemSegError("this architecture has no segmentation_head; cannot add classes")
    last = None
    for name, mod in head.named_modules():
        if isinstance(mod, nn.Conv2d):
            last = (name, mod)
    if last is None:
        raise SemSegError("no convolution in the segmentation head; cannot add classes")
    return head, last[0], last[1]


def add_classes(model: SemSegModel, n_classes: int, names: list[str], colors: list[str]) -> None:
    """Grow the model's output layer to ``n_classes``, keeping the weights of existing classes.

    New classes start from small random weights (half the spread of the existing ones) and the
    mean existing bias. The class names and colours are set in any case.
    """
    meta = model.metadata
    old = meta.classes
    if n_classes > old:
        head, name, conv = _head_conv(model.net)
        padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
        new = nn.Conv2d(conv.in_channels, n_classes, _pair(conv.kernel_size), _pair(conv.stride),
                        padding, _pair(conv.dilation), conv.groups, conv.bias is not None)
        with torch.no_grad():
            new.weight[:old] = conv.weight
            new.weight[old:] = torch.randn_like(new.weight[old:]) * conv.weight.std() * 0.5
            if conv.bias is not None and new.bias is not None:
                new.bias[:old] = conv.bias
                new.bias[old:] = conv.bias.mean()
        parent = head
        parts = name.split(".")
        for p in parts[:-1]:
            parent = getattr(parent, p)
        setattr(parent, parts[-1], new.to(conv.weight.device))
        meta.classes = n_classes
    meta.class_names = list(names)
    meta.class_colors = list(colors)
