"""One optimization step of a conditional GAN, as plain functions a training task calls.

:class:`GanState` holds the two networks, their optimizers and an exponential moving average
(EMA) of the generator's weights, which is what gets saved (smoother, better images than the
raw weights). :func:`gan_step` runs one discriminator update and one generator update on a
:class:`~.data.GanBatch` and returns the losses.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..device import autocast
from .data import GanBatch, one_hot
from .losses import discriminator_loss, generator_adversarial_loss, reconstruction_loss
from .networks import SegmentationDiscriminator, UNetGenerator


@dataclass
class GanState:
    """Networks, optimizers and the EMA copy of the generator."""

    generator: UNetGenerator
    discriminator: SegmentationDiscriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: UNetGenerator

    @classmethod
    def create(cls, generator: UNetGenerator, discriminator: SegmentationDiscriminator, *,
               lr_g: float, lr_d: float, ema: UNetGenerator | None = None) -> GanState:
        """Adam (beta1 = 0, as OASIS) for both networks; the EMA starts as a copy of the
        generator unless given."""
        opt_g = torch.optim.Adam(generator.parameters(), lr=lr_g, betas=(0.0, 0.999))
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr_d, betas=(0.0, 0.999))
        if ema is None:
            ema = copy.deepcopy(generator)
        return cls(generator, discriminator, opt_g, opt_d, ema.eval().requires_grad_(False))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int,
               decay: float = 0.999) -> None:
    """``ema = d * ema + (1 - d) * model`` with ``d`` ramped up from 0 over the first steps
    (``min(decay, (1 + step) / (10 + step))``), so early weights are soon forgotten."""
    d = min(decay, (1.0 + step) / (10.0 + step))
    for e, p in zip(ema.parameters(), model.parameters(), strict=False):
        e.lerp_(p.detach(), 1.0 - d)
    for eb, mb in zip(ema.buffers(), model.buffers(), strict=False):
        eb.copy_(mb)


def gan_step(state: GanState, batch: GanBatch, step: int, *, reconstruction: float = 10.0,
             pool: int = 8, amp: bool = False) -> dict[str, float]:
    """One discriminator and one generator update (``step`` counts the run's steps, for the
    EMA); returns the losses ``d``, ``g_adv``, ``g_rec`` and ``g`` (the generator's total)."""
    g, d = state.generator, state.discriminator
    device = batch.real.device
    g.train()
    d.train()
    classes = g.classes
    with autocast(device, amp):
        fake = g(one_hot(batch.sparse, classes), batch.noise)
    # discriminator: real pixels -> their class, generated pixels -> 0
    d.requires_grad_(True)
    with autocast(device, amp):
        logits = d(torch.cat([batch.real, fake.detach()]))
    n = batch.real.shape[0]
    d_loss = discriminator_loss(logits[:n], logits[n:], batch.labels)
    state.opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    state.opt_d.step()
    # generator: generated pixels should be seen as real pixels of their class
    d.requires_grad_(False)
    with autocast(device, amp):
        fake_logits = d(fake)
    adv = generator_adversarial_loss(fake_logits, batch.labels, batch.sparse)
    rec = reconstruction_loss(fake, batch.real, batch.sparse, pool)
    g_loss = adv + reconstruction * rec
    state.opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    state.opt_g.step()
    d.requires_grad_(True)
    update_ema(state.ema, g, step)
    return {"d": d_loss.item(), "g_adv": adv.item(), "g_rec": rec.item(), "g": g_loss.item()}
