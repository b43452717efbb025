"""Generator training as a task of the training engine (:mod:`napari_semseg.core.training`).

The :class:`~napari_semseg.core.training.engine.Trainer` owns the loop (steps, learning-rate
schedule, time budget, cancellation, progress events) and the callbacks (atomic checkpoints,
provenance, previews, thread tuning); :class:`GeneratorTask` says what one step computes: a
batch of random crops, one discriminator and one generator update (:func:`.steps.gan_step`).

What it owns: ``model()`` is the exported generator -- the exponential moving average of the
trained weights (:class:`~.model_file.GeneratorModel`); ``modules()`` are the raw generator and
the discriminator (checkpointed, never exported); ``optimizers()`` their two Adams.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..device import free_memory, precision_name
from ..training.data import describe_sources
from ..training.state import LoopState
from ..training.task import StepResult, Task
from .data import PairSampler
from .model_file import GeneratorModel, build_generator, save_generator
from .networks import SegmentationDiscriminator
from .prepare import GeneratorData
from .settings import GeneratorSettings
from .steps import GanState, gan_step

D_LR_FACTOR = 2.0  # the discriminator learns twice as fast (two time-scale update rule)


def new_generator(data: GeneratorData, settings: GeneratorSettings) -> GeneratorModel:
    """An untrained generator for the data's classes, channels and image statistics."""
    channels = data.images[0].n_channels
    return build_generator(
        data.classes, channels, base=settings.base_channels, depth=settings.depth,
        noise_fine=settings.noise_fine, noise_smooth=settings.noise_smooth,
        noise_cell=settings.noise_cell, dtype=str(data.dtype),
        class_names=data.class_names, class_colors=data.class_colors,
        channel_names=["grey"] if channels == 1 else (
            ["red", "green", "blue"] if channels == 3 else []),
        intensity_low=data.low, intensity_high=data.high, class_means=data.class_means,
        class_stds=data.class_stds)


class GeneratorTask(Task):
    """Train a conditional generator on image/label-map pairs (OASIS-style GAN)."""

    def __init__(self, model: GeneratorModel, data: GeneratorData, settings: GeneratorSettings,
                 device: torch.device) -> None:
        self.exported, self.data, self.settings, self.device = model, data, settings, device
        self.gan: GanState | None = None
        self.sampler: PairSampler | None = None

    def start(self, saved: Mapping[str, Any] | None) -> str:
        s, meta = self.settings, self.exported.metadata
        torch.manual_seed(s.seed)
        raw = copy.deepcopy(self.exported.net)
        disc = SegmentationDiscriminator(meta.channels, meta.classes, s.discriminator_channels,
                                         s.depth)
        self.exported.to(self.device)
        self.gan = GanState.create(raw.to(self.device).train(), disc.to(self.device).train(),
                                   lr_g=s.learning_rate, lr_d=s.learning_rate * D_LR_FACTOR,
                                   ema=self.exported.net)
        pixels = sum(i.n_planes * i.plane_shape[0] * i.plane_shape[1] for i in self.data.images)
        return (f"training a generator ({meta.classes} classes, {meta.channels} channel(s)) "
                f"on {len(self.data.images)} image(s), {pixels / 1e6:.1f} Mpx, on {self.device}")

    @property
    def networks(self) -> GanState:
        """The networks and optimizers (after :meth:`start`)."""
        if self.gan is None:
            raise RuntimeError("the task has not been started")
        return self.gan

    def model(self) -> GeneratorModel:
        return self.exported

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.networks.generator, "discriminator": self.networks.discriminator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"generator": self.networks.opt_g, "discriminator": self.networks.opt_d}

    def begin_epoch(self, epoch: int) -> None:
        s, meta = self.settings, self.exported.metadata
        self.sampler = PairSampler(
            self.data.images, self.data.labels, s.crop_size, meta.intensity_low,
            meta.intensity_high, meta.classes,
            (meta.noise_fine, meta.noise_smooth, meta.noise_cell),
            seed=s.seed * 1_000_003 + epoch, dropout=s.label_dropout, augment=s.augment)

    def step(self, loop: LoopState) -> StepResult:
        s = self.settings
        if self.sampler is None:
            raise RuntimeError("step before begin_epoch")
        batch = self.sampler.batch(s.batch_size).to(self.device)
        losses = gan_step(self.networks, batch, loop.step, reconstruction=s.reconstruction,
                          pool=s.reconstruction_pool, amp=s.amp)
        return StepResult(losses["g"], s.batch_size,
                          {"loss_d": losses["d"], "loss_adversarial": losses["g_adv"],
                           "loss_reconstruction": losses["g_rec"]})

    def export(self, weights: Mapping[str, torch.Tensor] | None = None) -> GeneratorModel:
        out = copy.deepcopy(self.exported).cpu().eval()
        if weights is not None:
            out.load_state_dict(weights)
        return out

    def validate(self) -> dict[str, float] | None:
        """Nothing to validate on (a GAN's losses do not rank generators): the last weights
        are exported."""
        return None

    def save(self, model: nn.Module, path: Path) -> None:
        if not isinstance(model, GeneratorModel):
            raise TypeError(f"expected a GeneratorModel, got {type(model).__name__}")
        save_generator(model, path)

    def provenance(self) -> dict[str, Any]:
        return {"task": "generator", "settings": asdict(self.settings),
                "images": describe_sources(self.data.images), "seed": self.settings.seed,
                "device": str(self.device),
                "precision": precision_name(self.device, self.settings.amp)}

    def close(self) -> None:
        free_memory(self.device)
