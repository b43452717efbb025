"""The task protocol: what one kind of training computes, owns, checkpoints and exports.

The :class:`~napari_semseg.core.training.engine.Trainer` runs every kind of training with one
loop (steps, learning-rate schedule, budget, cancellation, progress events); a :class:`Task`
says what is trained. The trainer calls, in this order::

    start(saved_state)          once; build optimizers, move modules to the device
    [optimizers and modules() are restored from the checkpoint when resuming]
    per epoch:  begin_epoch(epoch)
                step(loop)      steps_per_epoch times (the trainer sets the learning rates)
                validate()      via the Validation callback, if one is given
                state(), model(), modules(), optimizers(), save(...)   via Checkpoint
    export(best weights)        the model the run returns
    close()                     always, also when the run is cancelled or fails

What a task owns
    ``model()`` is the live module whose weights are exported (a segmenter, a generator);
    ``modules()`` are other trained modules that are checkpointed but never exported (a
    discriminator); ``optimizers()`` are all its optimizers by name (the schedule scales every
    parameter group from the learning rate it was created with). Checkpoints hold the exported
    model as a model file (:meth:`Task.save`, atomic) and, in a ``.state`` file next to it, the
    optimizers, the other modules, the best weights, the loop counters and :meth:`Task.state`.

What one step computes
    :meth:`Task.step` draws a batch, computes the losses, and steps its optimizer(s); it returns
    a :class:`StepResult` (the loss shown in progress events, the number of samples, and any
    per-step metrics, which are merged into the step's event).

Two tasks this protocol is shaped for, beyond segmentation (:mod:`.tasks.segmentation`):

* adversarial segmentation -- ``model()`` the segmenter, ``modules()`` ``{"discriminator":
  D}``, ``optimizers()`` ``{"segmenter": ..., "discriminator": ...}``; ``step`` updates D on
  real label maps vs. predictions, then the segmenter on its loss plus the adversarial term,
  returning the segmenter loss and ``{"loss_d": ...}``; ``validate`` gives IoU; D is
  checkpointed (``modules()``) and never exported.
* label map to image generator -- ``model()`` G, ``modules()`` ``{"discriminator": D}``,
  two optimizers; ``validate`` may return e.g. ``{"l1": ...}`` with
  ``Validation(monitor="l1", higher_is_better=False)``; ``export`` gives G with its metadata.

Subclass :class:`Task` to inherit the defaults of the optional methods.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .state import LoopState


@dataclass
class StepResult:
    """What one optimization step reports.

    Attributes
    ----------
    loss
        The loss shown in progress events and averaged per epoch (for several networks, the
        one of the exported model).
    samples
        Samples (patches, images) the step used; counted for the throughput in the record.
    metrics
        Other per-step numbers (e.g. a discriminator's loss), merged into the step's event.
    """

    loss: float
    samples: int
    metrics: dict[str, float] = field(default_factory=dict)


class Task(Protocol):
    """What varies between kinds of training; see the module docstring for the call order.

    Required: :meth:`start`, :meth:`model`, :meth:`optimizers`, :meth:`step`, :meth:`save`.
    The others have defaults (subclass :class:`Task` to inherit them).
    """

    def start(self, saved: Mapping[str, Any] | None) -> str:
        """Prepare the run: move modules to the device, build the optimizers.

        ``saved`` is the checkpoint's saved state when resuming (it holds what :meth:`state`
        returned), else None. Returns the message of the run's first event.
        """
        ...

    def model(self) -> nn.Module:
        """The live module whose weights are exported (on its training device)."""
        ...

    def modules(self) -> dict[str, nn.Module]:
        """Other trained modules, checkpointed but never exported (e.g. a discriminator)."""
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimizer by name (names without ``/``); available after :meth:`start`."""
        ...

    def begin_epoch(self, epoch: int) -> None:
        """Called before the first step of each epoch (e.g. to seed that epoch's sampling)."""

    def step(self, loop: LoopState) -> StepResult:
        """One optimization step (forward, losses, backward, optimizer steps)."""
        ...

    def validate(self) -> dict[str, float] | None:
        """Validation metrics of the current weights, or None when there is nothing to
        validate on (then the last weights, not the best ones, are exported)."""

    def export(self, weights: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
        """An independent CPU copy of :meth:`model` in eval mode, with ``weights`` if given."""
        out = copy.deepcopy(self.model()).cpu().eval()
        if weights is not None:
            out.load_state_dict(weights)
        return out

    def save(self, model: nn.Module, path: Path) -> None:
        """Write an exported (or the live) model as a model file, atomically."""
        ...

    def state(self) -> dict[str, Any]:
        """JSON-able task state saved with checkpoints and handed back to :meth:`start`."""
        return {}

    def provenance(self) -> dict[str, Any]:
        """Task facts for the training record (settings, data, device, ...)."""
        return {}

    def set_training_record(self, model: nn.Module, record: dict[str, Any]) -> None:
        """Store the training record in ``model`` (by default in ``model.metadata.training``)."""
        metadata = model.metadata
        if not hasattr(metadata, "training"):
            raise TypeError(f"{type(model).__name__} has no model metadata; override "
                            "set_training_record for it")
        metadata.training = record

    def close(self) -> None:
        """Release what the run holds (device memory); called at the end of every run."""
