"""Typed settings shared by the Python API, the CLI and the napari widgets.

The same option has the same name everywhere: ``segment(image, model, tile=512)``,
``napari-semseg predict --tile 512`` and the Segment widget's ``tile`` field all map onto
:class:`PredictSettings.tile`.

Each field's metadata is the single source of what the option means and which values it takes
(see :class:`Option`): ``help`` (CLI help, widget tooltip), ``minimum``/``maximum``,
``multiple_of``, ``choices``. :meth:`PredictSettings.validated`, the CLI options
(:mod:`napari_semseg.cli.options`) and the widget editors (``napari_semseg._napari._form``) are
derived from it; :func:`option_fields` gives the resolved view (type, default, metadata).
"""

from __future__ import annotations

import functools
import os
import numbers
import json
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import SemSegError

_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


@dataclass(frozen=True)
class Option:
    """Metadata of one settings field (stored flat in the dataclass field's ``metadata``).

    Parameters
    ----------
    help
        What the option does, with its default where it is computed (CLI help, tooltips).
    minimum, maximum
        Allowed range (inclusive; ``exclusive_minimum``/``exclusive_maximum`` make it strict).
    multiple_of
        Values must be multiples of this.
    choices
        The only values allowed (for text options).
    suggestions
        Values offered by editors (a widget's drop-down), not enforced.
    unit
        Unit named in error messages ("pixels", "seconds").
    rule
        Wording of the allowed range in error messages, where the generic one is not as clear.
    step
        Increment of the widget's editor (default: ``multiple_of``, else 1).
    widget_maximum
        Upper end of the widget's editor where the range is open (not enforced elsewhere).
    true_choice
        For a text option with choices that used to be a switch: the choice ``True`` stands
        for (``False`` stands for the first choice); a bare CLI flag means it too.
    """

    help: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    multiple_of: int | None = None
    choices: tuple[str, ...] = ()
    suggestions: tuple[str, ...] = ()
    unit: str = ""
    rule: str = ""
    step: float | None = None
    widget_maximum: float | None = None
    true_choice: str = ""

    def from_switch(self, value: Any) -> Any:
        """``value`` with ``True``/``False`` replaced by their choices (see ``true_choice``)."""
        if self.true_choice and isinstance(value, bool):
            return self.true_choice if value else self.choices[0]
        return value

    def accepts(self, value: Any) -> bool:
        """True if ``value`` is within the range, a multiple and one of the choices."""
        if self.choices and value not in self.choices:
            return False
        if self.minimum is not None:
            above = value > self.minimum if self.exclusive_minimum else value >= self.minimum
            if not above:  # written so that NaN is refused
                return False
        if self.maximum is not None:
            below = value < self.maximum if self.exclusive_maximum else value <= self.maximum
            if not below:
                return False
        return not (self.multiple_of and value % self.multiple_of)

    def describe_range(self, integer: bool) -> str:
        """The allowed values in words: "at least 1", "in [0, 1)", "1 to 5", "one of a, b"."""
        if self.rule:
            return self.rule
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.multiple_of:
            return f"a multiple of {self.multiple_of}"
        unit = f" {self.unit}" if self.unit else ""
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            if integer:
                return f"{lo:g} to {hi:g}{unit}"
            return (f"in {'(' if self.exclusive_minimum else '['}{lo:g}, "
                    f"{hi:g}{')' if self.exclusive_maximum else ']'}")
        if lo is not None:
            if lo == 0:
                return f"positive{unit}" if self.exclusive_minimum else f"0 or more{unit}"
            return f"{'more than' if self.exclusive_minimum else 'at least'} {lo:g}{unit}"
        if hi is not None:
            return f"{'less than' if self.exclusive_maximum else 'at most'} {hi:g}{unit}"
        return "valid"


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field whose metadata holds an :class:`Option` (checked when defined)."""
    Option(help, **extra)  # unknown keys fail here, at import
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class OptionField:
    """One settings field resolved: name, value type, whether ``None`` is allowed, default and
    :class:`Option` metadata."""

    name: str
    type: type  # int, float, str or bool
    optional: bool  # None allowed: "automatic" or "none"
    default: Any
    option: Option

    @property
    def flag(self) -> str:
        """The CLI option: ``batch_size`` -> ``--batch-size``."""
        return "--" + self.name.replace("_", "-")

    @property
    def help(self) -> str:
        return self.option.help

    def check(self, value: Any) -> None:
        """Raise :class:`SemSegError` (one line naming the CLI flag) if ``value`` is refused."""
        if value is None and self.optional:
            return
        wrong = self._type_problem(value)
        if wrong:
            shown = repr(value) if isinstance(value, str) else value
            raise SemSegError(f"{self.flag} must be {wrong}, got {shown}")
        if self.type is bool or self.option.accepts(value):
            return
        shown = repr(value) if isinstance(value, str) else value
        raise SemSegError(f"{self.flag} must be {self.option.describe_range(self.type is int)}, "
                          f"got {shown}")


    def _type_problem(self, value: Any) -> str:
        """What ``value`` should be when its type is wrong ("" when it is right): a whole
        number for int options (0.25 is not silently truncated), a number for float options,
        text for text options (``device=0`` is not a device)."""
        if self.type is int and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            return "a whole number"
        if self.type is float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            return "a number"
        if self.type is str and not isinstance(value, (str, os.PathLike)) and not (
                isinstance(value, bool) and self.option.true_choice):
            choices = self.option.choices or self.option.suggestions
            return "text" + (f" such as {', '.join(map(repr, choices[:4]))}" if choices else "")
        return ""


def _value_type(annotation: Any) -> tuple[type, bool]:
    """``(type, optional)`` of an annotation such as ``int | None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(annotation))
    return annotation, False


@functools.cache
def option_fields(settings_cls: type) -> dict[str, OptionField]:
    """The fields of a settings dataclass with their types and :class:`Option` metadata."""
    hints = typing.get_type_hints(settings_cls)
    out = {}
    for f in fields(settings_cls):
        typ, optional = _value_type(hints[f.name])
        default = f.default if f.default is not MISSING else None
        out[f.name] = OptionField(f.name, typ, optional, default, Option(**f.metadata))
    return out


def check_ranges(settings: Any) -> None:
    """Check every field of a settings object against its metadata (first problem raises)."""
    cls: Any = type(settings)
    for name, spec in option_fields(cls).items():
        spec.check(getattr(settings, name))


def switches_to_choices(settings: Any) -> None:
    """Replace ``True``/``False`` in text options that used to be switches (``true_choice``)."""
    cls: Any = type(settings)
    for name, spec in option_fields(cls).items():
        if spec.option.true_choice:
            setattr(settings, name, spec.option.from_switch(getattr(settings, name)))


DEVICES = ("auto", "cpu", "cuda", "mps")
UNCERTAINTY_KINDS = ("none", "entropy", "margin", "tta")
# encoders offered by the Train widget (any segmentation-models-pytorch encoder works)
ENCODERS = ("mobilenet_v2", "resnet18", "resnet34", "resnet50", "efficientnet-b0",
            "timm-regnety_002", "mit_b0", "densenet121", "vgg11")


def bundled_start_names() -> tuple[str, ...]:
    """Names of the encoder starts shipped with the package (read from the weights manifest,
    without importing torch)."""
    try:
        return tuple(sorted(json.loads((_WEIGHTS / "manifest.json").read_text())))
    except (OSError, ValueError):
        return ()


AUTO_START = "auto"
NO_START = ("none", "random", "")  # spellings of "random initialisation" in text fields
# the start "auto" picks for an encoder (others start from random weights)
DEFAULT_STARTS = {"mobilenet_v2": "mobilenet_v2-imagenet"}
START_CHOICES = (AUTO_START, *bundled_start_names(), "imagenet", "none")


@dataclass
class PredictSettings:
    """Settings of tiled prediction (:func:`napari_semseg.segment`)."""

    tile: int | None = _opt(
        None, "tile edge in pixels, rounded up to a multiple of the network stride (default: "
              "1216 for stride 32, 1120 for stride 16: the model's tile plus the overlap; on a "
              "GPU chosen from free memory)",
        minimum=1, rule="a positive number of pixels", step=32, widget_maximum=16384)
    overlap: int | None = _opt(
        None, "overlap between neighbouring tiles in pixels, blended with cosine weights "
              "(default: 192 for stride 32, 96 for stride 16: six network strides, or twice the "
              "model's halo if larger)",
        minimum=0, unit="pixels", step=32, widget_maximum=1024)
    device: str = _opt("auto", "'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda', 'cuda:1', 'mps'",
                       suggestions=DEVICES)
    batch_size: int | None = _opt(None, "tiles per forward pass (default: 1 on CPU, "
                                        "chosen from free memory on GPU)",
                                  minimum=1, widget_maximum=256)
    probabilities: bool = _opt(False, "also write class probabilities (uint8, 0-255)")
    uncertainty: str = _opt(
        "none", "also write a per-pixel uncertainty (uint8, 0 = certain, 255 = most uncertain): "
                "entropy (normalized), margin (1 - (p1 - p2) of the two likeliest classes) or "
                "tta (disagreement of the test-time-augmented copies; with tta 1, all 8 "
                "copies are computed); "
                "True means entropy",
        choices=UNCERTAINTY_KINDS, true_choice="entropy")
    chunk: int | None = _opt(None, "edge of the output chunks written to disk, in pixels "
                                   "(default: tile - overlap, 1024 with the default tile, so "
                                   "each tile finishes one chunk)",
                             minimum=64, unit="pixels")
    channel_axis: int | None = _opt(None, "axis of the image that holds channels "
                                          "(default: inferred)")
    pixel_size: float | None = _opt(None, "pixel size of the input in the model's unit; the image "
                                          "is rescaled to the model's pixel size",
                                    minimum=0.0, exclusive_minimum=True)
    amp: bool = _opt(True, "mixed precision: bf16/fp16 on GPU, bf16 on CPUs that compute it "
                           "natively (AVX512-BF16, AMX; 1.9x faster, 99.96 % label agreement "
                           "with fp32 measured)")
    compile: bool = _opt(False, "torch.compile the model (GPU, long runs)")
    tta: int = _opt(1, "test-time augmentation: average the probabilities of this many flipped/"
                       "transposed copies of each tile, 1 (off) to 8; n times slower, smoother "
                       "and a little more accurate (8: +0.005 mean IoU median, up to +0.02, "
                       "measured)",
                    minimum=1, maximum=8, rule="1 (off) to 8 transformed copies")
    overwrite: bool = _opt(False, "replace an existing output")
    resume: bool = _opt(False, "continue an interrupted run, computing only missing chunks")

    def __post_init__(self) -> None:
        switches_to_choices(self)

    @property
    def uncertainty_kind(self) -> str | None:
        """The uncertainty written: ``"entropy"``, ``"margin"``, ``"tta"`` or None."""
        return None if self.uncertainty in ("none", False) else \
            option_fields(PredictSettings)["uncertainty"].option.from_switch(self.uncertainty)

    def validated(self) -> PredictSettings:
        """Return self after checking value ranges; raise :class:`SemSegError` otherwise."""
        check_ranges(self)
        return self


@dataclass
class TrainSettings:
    """Settings of training (:func:`napari_semseg.train`)."""

    arch: str = _opt("unet", "architecture: unet, unetplusplus, fpn, deeplabv3plus, segformer, ...")
    encoder: str = _opt("mobilenet_v2", "any segmentation-models-pytorch encoder name",
                        suggestions=ENCODERS)
    encoder_weights: str | None = _opt(
        AUTO_START, "where a new model's encoder starts: 'auto' (the bundled start of the "
                    "encoder if there is one, " + ", ".join(
                        f"{k}: {v}" for k, v in DEFAULT_STARTS.items()) + "; else random), "
                    "'none' (random), a bundled start (" + (", ".join(bundled_start_names())
                                                            or "none installed") + "), a path "
                    "to a .safetensors file of encoder weights, or 'imagenet' (smp's download, "
                    "online only); inputs are normalized as the start expects",
        suggestions=START_CHOICES)
    encoder_depth: int | None = _opt(4, "encoder stages used by Unet, Unet++ and MAnet (1-5; "
                                        "fewer is faster, with less context)",
                                     minimum=1, maximum=5)
    decoder_channels: str | None = _opt("64,32,16,16", "Unet/Unet++/MAnet decoder widths, "
                                                       "comma-separated, one per encoder stage")
    first_answer: str = _opt(
        "auto", "for a new model, first fit a head on frozen pretrained features (seconds): the "
                "first preview, and the model returned if the CNN does not validate better; "
                "'auto': on for runs bounded only by time_budget, off with epochs; 'on', 'off' "
                "(True/False in Python)",
        choices=("auto", "on", "off"))
    epochs: int | None = _opt(None, "number of epochs (default: until time_budget, else 50)",
                              minimum=1, widget_maximum=10000)
    time_budget: float | None = _opt(None, "wall-clock budget in seconds",
                                     minimum=0.0, exclusive_minimum=True, unit="seconds",
                                     step=10.0, widget_maximum=86400.0)
    steps_per_epoch: int = _opt(25, "optimizer steps per epoch (validation, checkpoint and new "
                                    "annotations happen between epochs)",
                                minimum=1, step=10, widget_maximum=10000)
    batch_size: int = _opt(4, "patches per step", minimum=1, widget_maximum=256)
    patch_size: int = _opt(256, "training patch edge in pixels (multiple of 32)",
                           minimum=32, multiple_of=32, widget_maximum=2048)
    learning_rate: float = _opt(3e-3, "peak learning rate (one-cycle schedule)",
                                minimum=0.0, exclusive_minimum=True, step=1e-4,
                                widget_maximum=1.0)
    weight_decay: float = _opt(1e-4, "AdamW weight decay")
    encoder_lr: float = _opt(1.0, "learning rate of the encoder relative to learning_rate "
                                  "(below 1 changes pretrained features more slowly)",
                             minimum=0.0, maximum=1.0, step=0.05)
    encoder_bn: str = _opt("train", "BatchNorm of the encoder: 'train' (batch statistics) or "
                                    "'frozen' (the start's running statistics, eval mode; "
                                    "steadier with tiny batches)",
                           choices=("train", "frozen"))
    frozen_encoder: float = _opt(0.0, "fraction of the run that trains the decoder only, "
                                      "the encoder fixed (decoder first, then everything)",
                                 minimum=0.0, maximum=1.0, exclusive_maximum=True)
    validation: float = _opt(0.2, "fraction of annotated pixels held out by region (blocks) for "
                                  "validation (0 disables validation)",
                             minimum=0.0, maximum=1.0, exclusive_maximum=True)
    loss: str = _opt("ce+dice", "loss on annotated pixels: ce, ce+dice, focal, focal+dice",
                     choices=("ce", "ce+dice", "focal", "focal+dice"))
    dice_weight: float = _opt(0.5, "weight of the Dice term")
    class_weighting: bool = _opt(True, "weight the loss by inverse class frequency")
    class_balance: float = _opt(1.0, "patch centres drawn per class: 1 = classes equally often, "
                                     "0 = in proportion to annotated pixels",
                                minimum=0.0, maximum=1.0)
    label_smoothing: float = _opt(0.0, "cross-entropy label smoothing")
    affinity_weight: float = _opt(0.0, "weight of the colour-affinity loss on unannotated "
                                       "pixels (pulls class boundaries onto image edges)")
    affinity_sigma: float = _opt(0.15, "intensity difference (normalized units) at which "
                                       "neighbours stop counting as alike")
    augment: bool = _opt(True, "augmentation: flips, 90-degree rotations, scale jitter, CutMix "
                               "and (see intensity_augment) intensity jitter")
    scale_jitter: float = _opt(0.25, "zoom range of the scale augmentation (0.25: 0.8x-1.25x)",
                               minimum=0.0)
    cutmix: float = _opt(0.3, "probability that a patch receives a CutMix box",
                         minimum=0.0, maximum=1.0)
    intensity_augment: float = _opt(0.0, "probability that a patch gets brightness/contrast/"
                                         "gamma/colour/blur/noise jitter (helps images whose "
                                         "acquisition varies; slows learning otherwise)",
                                    minimum=0.0, maximum=1.0)
    adversarial: float = _opt(0.0, "weight of the adversarial term: a small spectral-norm "
                                   "discriminator on (image, label map) pairs learns to tell the "
                                   "painted truth from predictions and the network learns to fool "
                                   "it (0 = off, the default: not yet measured on enough data "
                                   "sets to turn on; see the README)",
                              minimum=0.0, maximum=10.0, step=0.01)
    pseudo_labels: bool = _opt(False, "from 30 % of the run on, also train on unpainted pixels the "
                                      "model is sure of (the discriminator's confidence with "
                                      "adversarial > 0, else softmax > 0.9)")
    normalization: str = _opt("percentile", "input normalization: percentile, meanstd or none",
                              choices=("percentile", "meanstd", "none"))
    early_stopping: int | None = _opt(None, "stop after this many epochs without improvement "
                                            "(default: never; the one-cycle schedule gives its "
                                            "best results at the end)",
                                      minimum=1)
    device: str = _opt("auto", "'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda', 'mps'",
                       suggestions=DEVICES)
    amp: bool = _opt(True, "mixed precision: bf16/fp16 on GPU, bf16 on CPUs that compute it "
                           "natively (AVX512-BF16, AMX)")
    threads: int | None = _opt(None, "CPU threads (default: torch's; with only a time budget, "
                                     "the faster of that and 1, measured while training)",
                               minimum=1)
    seed: int = _opt(0, "random seed (runs on CPU with --epochs are deterministic for a seed)")
    checkpoint: str | None = _opt(None, "model file written atomically after every epoch")
    resume: bool = _opt(False, "continue from the checkpoint if it exists")

    def validated(self) -> TrainSettings:
        """Return self after checking value ranges; raise :class:`SemSegError` otherwise."""
        if isinstance(self.first_answer, bool):
            self.first_answer = "on" if self.first_answer else "off"
        check_ranges(self)
        if isinstance(self.encoder_weights, str) and \
                self.encoder_weights.strip().lower() in NO_START:
            self.encoder_weights = None
        if self.resume and not self.checkpoint:
            raise SemSegError("--resume needs --checkpoint (the file to continue from)")
        return self


def merge(settings_cls: type, settings: Any | None, overrides: dict[str, Any]) -> Any:
    """Build a settings object from an optional base and keyword overrides.

    Unknown keywords raise a :class:`TypeError` naming the valid options.
    """
    base = settings if settings is not None else settings_cls()
    names = {f.name for f in fields(settings_cls)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; valid: {sorted(names)}")
    return replace(base, **overrides)
