"""Training from painted annotations: the one generator behind the API, the CLI and the widget.

Data flow: check every input (shapes, dtypes, classes, channels, NaN) before any work; scan the
annotations into an :class:`~napari_semseg.core.sampling.AnnotationIndex`; hold out whole
blocks of annotations for validation; estimate normalization from the images; then, step by
step, read patches centred near annotated pixels (only those windows), normalize, zoom, augment
on the device, and minimize cross-entropy + Dice on annotated pixels with AdamW under a
one-cycle learning rate (driven by steps or by the wall-clock budget). Each epoch ends with a
validation on the held-out blocks, keeps the best model, writes an atomic checkpoint, and picks
up annotations handed over through an :class:`AnnotationFeed`.

This module is the facade: the loop is :class:`~napari_semseg.core.training.engine.Trainer`,
what a step computes is :class:`~napari_semseg.core.training.tasks.segmentation.SegmentationTask`,
and validation, checkpoints, the feed, provenance and previews are callbacks
(:mod:`napari_semseg.core.training.callbacks`).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import torch

from .device import resolve_device
from .errors import SemSegError
from .models import UNET_FAMILY, SemSegModel, add_classes, as_model, load_model
from .progress import drive
from .settings import TrainSettings, merge
from .training.callbacks import (
    AnnotationFeed,
    Callback,
    Checkpoint,
    DivergenceGuard,
    EarlyStopping,
    FirstAnswer,
    Preview,
    Provenance,
    ThreadTuning,
    UseNewAnnotations,
    Validation,
)
from .training.callbacks.first_answer import is_short
from .training.checkpoint import SavedState, read_checkpoint_state, write_checkpoint
from .training.data import (
    TrainData,
    estimate_training_normalization,
    open_annotations,
    open_training_image,
    prepare_data,
)
from .training.engine import Trainer, one_cycle
from .training.starts import check_start_setting
from .training.state import Budget, TrainProgress
from .training.tasks.adversarial import AdversarialTask
from .training.tasks.segmentation import (
    MAX_VALIDATION_BLOCKS,
    SegmentationTask,
    arch_options,
    validate,
)

DEFAULT_EPOCHS = 50
SETTLE = 0.5  # CNN epochs in the first half of a run are only provisionally best (Validation)

_arch_kwargs = arch_options  # the settings' architecture keywords (older name)

__all__ = ["DEFAULT_EPOCHS", "MAX_VALIDATION_BLOCKS", "UNET_FAMILY", "AnnotationFeed",
           "TrainData", "TrainProgress", "add_classes", "estimate_training_normalization",
           "iter_train", "one_cycle", "open_annotations", "open_training_image",
           "prepare_data", "read_checkpoint_state", "train", "validate", "write_checkpoint"]


def training_budget(settings: TrainSettings) -> Budget:
    """Epochs and/or time budget of the settings (50 epochs when neither is given)."""
    epochs = settings.epochs
    if epochs is None and settings.time_budget is None:
        epochs = DEFAULT_EPOCHS
    return Budget(epochs, settings.steps_per_epoch, settings.time_budget)


def first_answer_wanted(settings: TrainSettings) -> bool:
    """Whether a new model's run begins with a first answer (default: when only a time
    budget bounds it)."""
    choice = settings.first_answer
    if choice in (True, "on", False, "off"):
        return choice in (True, "on")
    return settings.epochs is None and settings.time_budget is not None


def segmentation_callbacks(settings: TrainSettings, device: torch.device, budget: Budget,
                           checkpoint: Path | None, feed: AnnotationFeed | None,
                           new_model: bool = True) -> list[Callback]:
    """The callbacks of a segmentation run, in the order they must run (the first answer only
    for a new model)."""
    callbacks: list[Callback] = []
    if device.type == "cpu":  # tune threads only where reproducibility does not depend on it
        tune = budget.epochs is None and budget.time_budget is not None
        callbacks.append(ThreadTuning(tune, settings.threads))
    if feed is not None:
        callbacks.append(UseNewAnnotations(feed))
    settle = SETTLE
    if first_answer_wanted(settings) and new_model:
        callbacks.append(FirstAnswer(settings.time_budget, settings.seed))
        if is_short(settings.time_budget):
            settle = math.inf  # a few dozen CNN steps never displace the first answer
    callbacks.append(DivergenceGuard())
    callbacks.append(Validation("mean_iou", "mean IoU", settle=settle))
    if settings.early_stopping is not None:
        callbacks.append(EarlyStopping(settings.early_stopping))
    callbacks.append(Provenance())
    if checkpoint is not None:
        callbacks.append(Checkpoint(checkpoint))
    callbacks.append(Preview())
    return callbacks


def _starting_point(settings: TrainSettings, checkpoint: Path | None,
                    model: SemSegModel | str | os.PathLike | None
                    ) -> tuple[SemSegModel | None, SavedState | None]:
    """The model to continue from (a copy; None for a new one) and the state to resume."""
    if checkpoint is not None and settings.resume and checkpoint.exists():
        return load_model(checkpoint).cpu(), read_checkpoint_state(checkpoint)
    if model is None:
        return None, None
    base = as_model(model)
    base = copy.deepcopy(base) if base is model else base
    return base.cpu(), None


def _task_class(settings: TrainSettings) -> type[SegmentationTask]:
    """Adversarial / pseudo-label training when asked for, else plain segmentation."""
    if settings.adversarial > 0 or settings.pseudo_labels:
        return AdversarialTask
    return SegmentationTask


def iter_train(images: Any, annotations: Any, settings: TrainSettings | None = None, *,
               model: SemSegModel | str | os.PathLike | None = None,
               class_names: list[str] | None = None, class_colors: list[str] | None = None,
               channel_axis: int | None = None, feed: AnnotationFeed | None = None,
               should_stop: Callable[[], bool] | None = None, shape_prior: Any = None,
               **options: Any) -> Generator[TrainProgress, None, SemSegModel]:
    """Train a model on painted annotations; yield :class:`TrainProgress`; return the model.

    Every check (shapes, label types, classes, channels, NaN, settings) runs when this function
    is called, before the generator is returned, so bad input raises :class:`SemSegError` at
    once. See :func:`train` for the parameters. ``should_stop()`` returning True ends the run
    after the current step and returns the best model so far. ``shape_prior``: ``(image,
    dense mask)`` pairs of other images shown to the discriminator (with ``adversarial > 0``).
    """
    settings = merge(TrainSettings, settings, options).validated()
    device = resolve_device(settings.device)
    checkpoint = Path(settings.checkpoint) if settings.checkpoint else None
    base, resume = _starting_point(settings, checkpoint, model)
    if base is None:
        check_start_setting(settings)  # a bad start is one line before any data is read
    _check_output_folder(checkpoint)
    block = max(32, settings.patch_size // 2)
    data = prepare_data(images, annotations, channel_axis=channel_axis, block=block, model=base,
                        class_names=class_names, class_colors=class_colors, seed=settings.seed)
    _check_patch_size(settings.patch_size, data)
    torch.manual_seed(settings.seed)
    task = _task_class(settings).create(data, settings, device, base)
    if shape_prior is not None:
        if not isinstance(task, AdversarialTask) or settings.adversarial <= 0:
            raise SemSegError("shape_prior needs adversarial > 0 (the discriminator uses it)")
        task.use_shape_prior(shape_prior)
    budget = training_budget(settings)
    callbacks = segmentation_callbacks(settings, device, budget, checkpoint, feed,
                                       new_model=base is None)
    trainer = Trainer(task, budget, callbacks, should_stop=should_stop, resume=resume,
                      monitor="mean_iou")
    return trainer.run()


def _check_output_folder(checkpoint: Path | None) -> None:
    """The model file's folder must exist and be writable before training starts (not after)."""
    if checkpoint is None:
        return
    folder = checkpoint.parent if str(checkpoint.parent) else Path(".")
    if not folder.is_dir():
        raise SemSegError(f"the folder of {checkpoint} does not exist; create it or choose "
                          "another output")
    if not os.access(folder, os.W_OK):
        raise SemSegError(f"cannot write {checkpoint}: its folder is not writable; choose "
                          "another output")


def _check_patch_size(patch_size: int, data: Any) -> None:
    """Refuse patches far larger than every image (they hold padding, and memory runs out)."""
    largest = max(max(s.plane_shape) for s in data.images)
    fits = -(-largest // 32) * 32
    if patch_size > max(2 * fits, 256):
        raise SemSegError(f"patch_size {patch_size} is far larger than the largest training "
                          f"image ({largest} px); use --patch-size {fits} or less")


# keyword options of train() that go to iter_train() rather than into the TrainSettings
_ITER_TRAIN_OPTIONS = ("class_names", "class_colors", "channel_axis", "feed", "should_stop",
                       "shape_prior")


def _overrides(settings: TrainSettings | None, values: dict[str, Any]) -> dict[str, Any]:
    """The arguments that override ``settings``: with settings, only those not left at their
    defaults (the settings keep their values for the others)."""
    if settings is None:
        return values
    defaults = TrainSettings()
    return {k: v for k, v in values.items() if v != getattr(defaults, k)}


def train(images: Any, annotations: Any, *, model: SemSegModel | str | os.PathLike | None = None,
          arch: str = "unet", encoder: str = "mobilenet_v2", epochs: int | None = None,
          time_budget: float | None = None, device: str = "auto", validation: float = 0.2,
          seed: int = 0, callback: Callable[[TrainProgress], Any] | None = None,
          settings: TrainSettings | None = None, **options: Any) -> SemSegModel:
    """Train a segmentation model from painted annotations (sparse strokes or dense masks).

    Parameters
    ----------
    images
        One image or a list: numpy, dask or zarr arrays, or paths (TIFFs are read lazily; only
        the windows of training patches are read). 2D, multichannel or Z/T stacks.
    annotations
        One label array per image with the image's shape without its channel axis: 0 = not
        annotated, 1..K = classes (napari Labels convention).
    model
        None to build ``arch``/``encoder`` from scratch, or a model / model file to fine-tune or
        continue (pass ``class_names`` with more names to add classes).
    arch, encoder
        Architecture and encoder of a new model (see :class:`TrainSettings`); the default is
        a Unet on MobileNetV2 (depth 4) whose encoder starts from the bundled ImageNet
        weights.
    encoder_weights (keyword option)
        Where a new model's encoder starts: ``"auto"`` (default: the bundled start of the
        encoder, random for encoders without one), ``None`` (random), a bundled start
        (:func:`napari_semseg.core.pretrained.list_starts`), a ``.safetensors`` file of
        encoder weights, or ``"imagenet"`` (smp's download, online only). Checked before any
        work; the model's inputs are normalized as the start expects and its metadata records
        the start (``metadata.start``). Ignored when fine-tuning ``model``.
    epochs, time_budget
        Number of epochs and/or a wall-clock budget in seconds (whichever ends first).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    validation
        Fraction of annotated pixels held out by region for validation (0 disables it).
    seed
        Random seed; a run on the CPU is reproducible for a seed (with ``epochs``).
    callback
        Called with every :class:`TrainProgress`; return ``False`` to stop (the best model so
        far is returned).
    settings
        A :class:`TrainSettings`; keyword options override its fields.
    **options
        Other :class:`TrainSettings` fields, plus ``class_names``, ``class_colors``,
        ``channel_axis``, ``feed`` and ``should_stop`` of :func:`iter_train`.

    Returns
    -------
    SemSegModel
        The best model (by validation mean IoU; the last one without validation), with
        normalization, class names/colours and training provenance in its metadata.
    """
    extra = {k: options.pop(k) for k in _ITER_TRAIN_OPTIONS if k in options}
    values = {**_overrides(settings, dict(arch=arch, encoder=encoder, epochs=epochs,
                                          time_budget=time_budget, device=device,
                                          validation=validation, seed=seed)), **options}
    stop = _StopOnFalse(callback, extra.pop("should_stop", None))
    job = iter_train(images, annotations, settings, model=model, should_stop=stop.should_stop,
                     **extra, **values)
    return drive(job, stop.relay)


class _StopOnFalse:
    """Relays events to a callback; stops the run (after the step) when it returns False."""

    def __init__(self, callback: Callable[[TrainProgress], Any] | None,
                 should_stop: Callable[[], bool] | None) -> None:
        self.callback, self.user_stop, self.stop = callback, should_stop, False

    def should_stop(self) -> bool:
        return self.stop or bool(self.user_stop and self.user_stop())

    def relay(self, event: TrainProgress) -> None:
        if self.callback is not None and self.callback(event) is False:
            self.stop = True
