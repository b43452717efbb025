"""Generator model files: the same safetensors + JSON format as segmentation models.

A generator file is one ``.safetensors`` file: the weights as tensors and, under the same header
key as a segmentation model (``napari_semseg``), a JSON document with ``"kind": "generator"``,
the network's shape, the class names and colours it was trained with, and the image statistics
it reproduces (output dtype, intensity range per channel, mean and spread of every class).
Loading never unpickles anything. A segmentation model given where a generator is expected (and
the reverse) is refused with one line.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SemSegError
from ..models import FORMAT, METADATA_KEY, PALETTE, _read_header, _versions
from .networks import UNetGenerator

KIND = "generator"
ARCH = "unet-generator"


@dataclass
class GeneratorMetadata:
    """Everything needed to synthesize images correctly, stored inside the generator file.

    Class ``k`` (1-based; 0 in a label map means "unconstrained") is ``class_names[k - 1]``.
    ``intensity_low`` / ``intensity_high`` are the per-channel values the network's output
    range ``[-1, 1]`` maps onto; ``class_means`` / ``class_stds`` (``[k - 1][channel]``) are
    the statistics of each class in the training images, in image units.
    """

    classes: int
    channels: int
    dtype: str = "uint8"
    base: int = 16
    depth: int = 4
    noise_fine: int = 2
    noise_smooth: int = 2
    noise_cell: int = 32
    class_names: list[str] = field(default_factory=list)
    class_colors: list[str] = field(default_factory=list)
    channel_names: list[str] = field(default_factory=list)
    intensity_low: list[float] = field(default_factory=list)
    intensity_high: list[float] = field(default_factory=list)
    class_means: list[list[float]] = field(default_factory=list)
    class_stds: list[list[float]] = field(default_factory=list)
    tile: int = 512
    overlap: int = 128  # tiles blend over this many pixels: 64 left seams of up to 54 grey
    # levels on a 1000-step EM generator (benchmarks/results/generation.md), 128 at most 1
    pixel_size: float | None = None
    pixel_unit: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    kind: str = KIND
    arch: str = ARCH
    format: str = FORMAT

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = [f"class {k}" for k in range(1, self.classes + 1)]
        if not self.class_colors:
            self.class_colors = ["#%02x%02x%02x" % PALETTE[(k - 1) % len(PALETTE)]
                                 for k in range(1, self.classes + 1)]
        if not self.channel_names:
            self.channel_names = [f"channel {c}" for c in range(self.channels)]
        if not self.intensity_low:
            self.intensity_low = [0.0] * self.channels
        if not self.intensity_high:
            self.intensity_high = [255.0] * self.channels

    @property
    def noise_channels(self) -> int:
        return self.noise_fine + self.noise_smooth

    @property
    def stride(self) -> int:
        return 2 ** (self.depth - 1)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GeneratorMetadata:
        data = json.loads(text)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class GeneratorModel(nn.Module):
    """A :class:`~.networks.UNetGenerator` plus its :class:`GeneratorMetadata`.

    ``model(onehot, noise)`` returns images in ``[-1, 1]`` of shape ``(B, channels, H, W)``;
    :meth:`to_image_units` maps them onto the training images' intensities.
    """

    def __init__(self, net: UNetGenerator, metadata: GeneratorMetadata) -> None:
        super().__init__()
        self.net = net
        self.metadata = metadata

    def forward(self, onehot: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.net(onehot, noise)

    def to_image_units(self, x: torch.Tensor) -> torch.Tensor:
        """Map network output ``(B, C, H, W)`` in ``[-1, 1]`` to image intensities (float)."""
        lo = torch.tensor(self.metadata.intensity_low, dtype=x.dtype, device=x.device)
        hi = torch.tensor(self.metadata.intensity_high, dtype=x.dtype, device=x.device)
        return lo.view(1, -1, 1, 1) + (x + 1) * 0.5 * (hi - lo).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        m = self.metadata
        return f"classes={m.classes}, channels={m.channels}, base={m.base}, depth={m.depth}"


def build_generator(classes: int, channels: int, *, base: int = 16, depth: int = 4,
                    noise_fine: int = 2, noise_smooth: int = 2, **metadata: Any
                    ) -> GeneratorModel:
    """A new (untrained) generator for label maps of ``classes`` classes and images of
    ``channels`` channels; further keywords are :class:`GeneratorMetadata` fields."""
    if classes < 1 or channels < 1:
        raise SemSegError(f"a generator needs at least 1 class and 1 channel, got {classes}, "
                          f"{channels}")
    if not 2 <= depth <= 6 or base < 4:
        raise SemSegError(f"generator depth must be 2 to 6 and base width at least 4, got "
                          f"depth {depth}, base {base}")
    meta = GeneratorMetadata(classes=classes, channels=channels, base=base, depth=depth,
                             noise_fine=noise_fine, noise_smooth=noise_smooth, **metadata)
    for name, values, n in (("class_names", meta.class_names, classes),
                            ("class_colors", meta.class_colors, classes),
                            ("channel_names", meta.channel_names, channels)):
        if len(values) != n:
            raise SemSegError(f"{name} has {len(values)} entries but the generator has {n}")
    return GeneratorModel(_make_net(meta), meta).eval()


def _make_net(meta: GeneratorMetadata) -> UNetGenerator:
    return UNetGenerator(meta.classes, meta.noise_channels, meta.channels, meta.base, meta.depth)


def save_generator(model: GeneratorModel, path: str | os.PathLike, *, overwrite: bool = True,
                   half: bool = False) -> Path:
    """Write ``model`` as one ``.safetensors`` file (atomically: a temporary name, then a
    rename). ``half=True`` stores the weights as float16 (loaded back as float32)."""
    from safetensors.torch import save_file

    if not isinstance(model, GeneratorModel):
        raise SemSegError("save_generator expects a generator from build_generator, "
                          "train_generator or load_generator")
    path = Path(path)
    if path.exists() and not overwrite:
        raise SemSegError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    model.metadata.versions = _versions()
    tensors = {k: v.detach().to("cpu").contiguous().clone()
               for k, v in model.net.state_dict().items()}
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp), metadata={METADATA_KEY: model.metadata.to_json(),
                                           "format": FORMAT})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    return path


def model_kind(path: str | os.PathLike) -> str:
    """``"generator"`` or ``"segmenter"`` for a napari-semseg model file (header only)."""
    return str(_metadata_dict(Path(path)).get("kind", "segmenter"))


def _metadata_dict(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise SemSegError(f"generator file {path} does not exist")
    if path.is_dir():
        raise SemSegError(f"generator path {path} is a folder; give the .safetensors file")
    header = _read_header(path)
    text = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if text is None:
        raise SemSegError(f"{path} is a safetensors file but has no napari-semseg metadata; "
                          "it was not written by napari-semseg")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SemSegError(f"{path} has damaged napari-semseg metadata: {exc}") from exc
    if not isinstance(data, dict):
        raise SemSegError(f"{path} has damaged napari-semseg metadata")
    return data


def read_generator_metadata(path: str | os.PathLike) -> GeneratorMetadata:
    """Read only the metadata of a generator file; refuse a segmentation model with one line."""
    path = Path(path)
    data = _metadata_dict(path)
    kind = data.get("kind", "segmenter")
    if kind != KIND:
        raise SemSegError(f"{path} is a segmentation model, not a generator; give a generator "
                          "file (napari-semseg train-generator writes one)")
    try:
        return GeneratorMetadata.from_json(json.dumps(data))
    except TypeError as exc:
        raise SemSegError(f"{path} has damaged generator metadata: {exc}") from exc


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu"
                   ) -> GeneratorModel:
    """Load a generator written by :func:`save_generator` (safetensors; never unpickles)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..device import resolve_device

    meta = read_generator_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise SemSegError(f"{path} is damaged: {exc}") from exc
    try:
        net = _make_net(meta)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SemSegError(f"{path} has damaged generator metadata: {exc}") from exc
    reference = net.state_dict()
    tensors = {k: v.to(reference[k].dtype) if k in reference and v.is_floating_point() else v
               for k, v in tensors.items()}
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise SemSegError(f"{path}: weights do not match the generator it declares: {first}"
                          ) from exc
    return GeneratorModel(net, meta).eval().to(resolve_device(device))


def as_generator(generator: GeneratorModel | str | os.PathLike) -> GeneratorModel:
    """Accept a generator object or a path to a generator file."""
    if isinstance(generator, GeneratorModel):
        return generator
    if isinstance(generator, (str, os.PathLike)):
        return load_generator(generator)
    if isinstance(generator, nn.Module) and hasattr(generator, "metadata"):
        raise SemSegError("this is a segmentation model, not a generator; give a generator "
                          "(napari-semseg train-generator writes one)")
    raise SemSegError(f"expected a generator or a generator file path, got "
                      f"{type(generator).__name__}")


