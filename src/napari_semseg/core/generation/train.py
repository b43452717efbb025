"""Generator training: the facade behind the API, the CLI and the widget.

Every input is checked before any work (:mod:`.prepare`); the run is a
:class:`~napari_semseg.core.training.engine.Trainer` over a :class:`~.task.GeneratorTask` with
the engine's callbacks: atomic checkpoints after every epoch (``--resume`` continues them),
the training record, per-epoch previews and, on CPUs, thread tuning. The iterator form yields
the engine's :class:`~napari_semseg.core.training.state.TrainProgress` events.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Generator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch

from ..device import resolve_device
from ..errors import SemSegError
from ..progress import drive
from ..training.callbacks import Callback, Checkpoint, Preview, Provenance, ThreadTuning
from ..training.checkpoint import SavedState, read_checkpoint_state
from ..training.engine import Trainer
from ..training.state import Budget, TrainProgress
from .model_file import GeneratorModel, as_generator, load_generator
from .prepare import GeneratorData, prepare_data
from .settings import GeneratorSettings
from .task import GeneratorTask, new_generator

DEFAULT_STEPS = 2000


def gan_schedule(fraction: float, peak: float) -> float:
    """Learning rate: the peak for the first 60 % of the run, then a linear decay to 10 % of
    it (as pix2pix decays its rate over the second half)."""
    f = min(max(fraction, 0.0), 1.0)
    return peak if f < 0.6 else peak * (1.0 - 0.9 * (f - 0.6) / 0.4)


def generator_budget(settings: GeneratorSettings) -> Budget:
    """Epochs of ``steps_per_epoch`` steps covering ``steps`` (2000 when neither steps nor a
    time budget is given), and/or the time budget."""
    steps = settings.steps
    if steps is None and settings.time_budget is None:
        steps = DEFAULT_STEPS
    epochs = None if steps is None else math.ceil(steps / settings.steps_per_epoch)
    return Budget(epochs, settings.steps_per_epoch, settings.time_budget)


def generator_callbacks(settings: GeneratorSettings, device: torch.device, budget: Budget,
                        checkpoint: Path | None) -> list[Callback]:
    """The callbacks of a generator run, in the order they must run."""
    callbacks: list[Callback] = []
    if device.type == "cpu":
        tune = budget.epochs is None and budget.time_budget is not None
        callbacks.append(ThreadTuning(tune, settings.threads))
    callbacks.append(Provenance())
    if checkpoint is not None:
        callbacks.append(Checkpoint(checkpoint))
    callbacks.append(Preview())
    return callbacks


def _check_base(base: GeneratorModel, data: GeneratorData) -> None:
    meta = base.metadata
    if data.classes > meta.classes:
        raise SemSegError(f"the label maps use class {data.classes} but the generator to "
                          f"continue knows {meta.classes} classes; train a new generator")
    channels = data.images[0].n_channels
    if channels != meta.channels:
        raise SemSegError(f"the images have {channels} channel(s) but the generator to "
                          f"continue makes {meta.channels}; train a new generator")


def _starting_point(settings: GeneratorSettings, generator: Any
                    ) -> tuple[GeneratorModel | None, SavedState | None]:
    checkpoint = Path(settings.checkpoint) if settings.checkpoint else None
    if checkpoint is not None and settings.resume and checkpoint.exists():
        return load_generator(checkpoint), read_checkpoint_state(checkpoint)
    if generator is None:
        return None, None
    import copy

    base = as_generator(generator)
    return (copy.deepcopy(base) if base is generator else base).cpu(), None


def _settings(settings: GeneratorSettings | None, options: dict[str, Any]) -> GeneratorSettings:
    base = settings if settings is not None else GeneratorSettings()
    names = {f.name for f in fields(GeneratorSettings)}
    unknown = set(options) - names
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; valid: {sorted(names)}")
    return replace(base, **options).validated()


def iter_train_generator(images: Any, label_maps: Any,
                         settings: GeneratorSettings | None = None, *,
                         generator: GeneratorModel | str | os.PathLike | None = None,
                         class_names: list[str] | None = None,
                         class_colors: list[str] | None = None, channel_axis: int | None = None,
                         should_stop: Callable[[], bool] | None = None, **options: Any
                         ) -> Generator[TrainProgress, None, GeneratorModel]:
    """Train a generator; yield :class:`TrainProgress` events; return the generator.

    Every check runs when this function is called, before the generator is returned, so bad
    input raises :class:`SemSegError` at once. ``should_stop()`` returning True ends the run
    after the current epoch. Parameters are those of :func:`train_generator`.
    """
    settings = _settings(settings, options)
    device = resolve_device(settings.device)
    base, resume = _starting_point(settings, generator)
    data = prepare_data(images, label_maps, channel_axis=channel_axis, class_names=class_names
                        or (base.metadata.class_names if base is not None else None),
                        class_colors=class_colors
                        or (base.metadata.class_colors if base is not None else None),
                        seed=settings.seed)
    if base is not None:
        _check_base(base, data)
    model = base if base is not None else new_generator(data, settings)
    task = GeneratorTask(model, data, settings, device)
    budget = generator_budget(settings)
    checkpoint = Path(settings.checkpoint) if settings.checkpoint else None
    trainer = Trainer(task, budget, generator_callbacks(settings, device, budget, checkpoint),
                      should_stop=should_stop, resume=resume, schedule=gan_schedule,
                      monitor="loss_reconstruction")
    return trainer.run()


def train_generator(images: Any, label_maps: Any, *, steps: int | None = None,
                    time_budget: float | None = None, device: str = "auto", seed: int = 0,
                    output: str | os.PathLike | None = None,
                    callback: Callable[[TrainProgress], Any] | None = None,
                    settings: GeneratorSettings | None = None, **options: Any
                    ) -> GeneratorModel:
    """Train a conditional generator that turns label maps into images like ``images``.

    Parameters
    ----------
    images
        One image or a list (numpy, dask, zarr or paths; read window by window): 2D,
        multichannel (one extra axis) or stacks.
    label_maps
        One label map per image, of the image's shape without the channel axis: 0 = not
        annotated, 1..K = classes.
    steps, time_budget
        Optimizer steps and/or a wall-clock budget in seconds (whichever ends first; 2000 steps
        when neither is given).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
    seed
        Random seed (CPU runs bounded by steps are deterministic for a seed).
    output
        Generator file (``.safetensors``) written atomically after every epoch and at the end;
        with ``resume=True`` an interrupted run continues from it.
    callback
        Called with each :class:`TrainProgress`; return ``False`` to cancel.
    settings
        A :class:`GeneratorSettings`; keyword options override its fields.
    **options
        Other :class:`GeneratorSettings` fields, plus ``generator`` (one to continue),
        ``class_names``, ``class_colors`` and ``channel_axis``.

    Returns
    -------
    GeneratorModel
        The generator (moving average of its weights) with its metadata.
    """
    keys = ("generator", "class_names", "class_colors", "channel_axis")
    extra = {k: options.pop(k) for k in keys if k in options}
    defaults = GeneratorSettings()
    given = {"steps": steps, "time_budget": time_budget, "device": device, "seed": seed,
             "checkpoint": None if output is None else str(output)}
    if settings is not None:  # keep the settings' values for options left at their defaults
        given = {k: v for k, v in given.items() if v != getattr(defaults, k)}
    options.update(given)
    return drive(iter_train_generator(images, label_maps, settings, **extra, **options), callback)
