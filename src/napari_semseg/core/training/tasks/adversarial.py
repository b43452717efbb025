"""Adversarial segmentation and pseudo-labels, as a :class:`~..task.Task`.

With ``adversarial = λ > 0`` a small fully convolutional discriminator ``D`` (spectral norm on
every convolution, no batch norm, so it behaves the same on batches of 2 or 8) looks at
(image, label map) pairs and says, per pixel, whether the label map there is the truth:

* **D's step** (every segmenter step, 1:1): on the painted pixels of the batch, the "real" map
  is the one-hot truth pasted into the segmenter's (detached) softmax, the "fake" map is the
  softmax itself; binary cross-entropy on the painted pixels only (there the truth is known),
  with one-sided label smoothing (real = 0.9). With a shape prior (dense masks of other
  images, :meth:`AdversarialTask.use_shape_prior`), D also sees those masks as real and the
  whole softmax map as fake, so it learns what realistic label maps look like.
* **the segmenter's step**: its usual loss on the painted pixels plus ``λ`` times the
  adversarial term (fool D everywhere: BCE of D's map on the softmax against "real"), as in
  Luc et al. 2016 and Hung et al. 2018.

``pseudo_labels`` adds, from 30 % of the run on, cross-entropy towards the segmenter's own
argmax on unpainted pixels that look trustworthy: where D's confidence exceeds 0.2 (Hung et
al.'s semi-supervised term) with a discriminator, else (the non-adversarial control) where the
softmax's top probability exceeds 0.9.

Only the segmenter is exported and saved as a model: D is a checkpointed module
(:meth:`modules`), restored when resuming and never written into model files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ...augment import augment_batch, draw_zoom, rescale
from ...device import autocast
from ...errors import SemSegError
from ...losses import partial_cross_entropy
from ..data import read_batch
from ..state import LoopState
from ..task import StepResult
from .segmentation import SegmentationTask

REAL_TARGET = 0.9  # one-sided label smoothing of D's "real" target
PSEUDO_START = 0.3  # fraction of the run after which pseudo-labels are used
PSEUDO_WEIGHT = 0.5  # weight of the pseudo-label cross-entropy
D_THRESHOLD = 0.2  # D's confidence above which a pixel's argmax becomes a pseudo-label
SOFTMAX_THRESHOLD = 0.9  # the control's threshold on the top softmax probability
D_LEARNING_RATE = 1e-4  # peak rate of D (Adam, betas 0.5/0.999), scaled by the schedule too


class Discriminator(nn.Module):
    """Fully convolutional (image, label map) critic: a logit per pixel, at input resolution.

    Three stride-2 convolutions and a 3x3 head, all spectrally normalized, LeakyReLU between;
    about 60 k parameters for 3 image channels and 6 classes at ``width=32``.
    """

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        widths = [in_channels, width, 2 * width, 2 * width]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=False):
            layers += [spectral_norm(nn.Conv2d(a, b, 4, stride=2, padding=1)),
                       nn.LeakyReLU(0.2, inplace=True)]
        layers.append(spectral_norm(nn.Conv2d(widths[-1], 1, 3, padding=1)))
        self.body = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
        out = self.body(torch.cat([image, label_map], dim=1))
        return F.interpolate(out, size=image.shape[-2:], mode="bilinear", align_corners=False)


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``(B, K, H, W)`` float one-hot of labels 1..K (0, unpainted, gives all zeros)."""
    return F.one_hot(labels.long(), classes + 1)[..., 1:].permute(0, 3, 1, 2).float()


def pseudo_labels(probs: torch.Tensor, painted: torch.Tensor, confidence: torch.Tensor,
                  threshold: float) -> torch.Tensor:
    """Labels 1..K where an unpainted pixel's ``confidence`` exceeds ``threshold``, else 0."""
    chosen = (~painted) & (confidence > threshold)
    return torch.where(chosen, probs.argmax(1) + 1, torch.zeros_like(painted, dtype=torch.long))


class AdversarialTask(SegmentationTask):
    """:class:`SegmentationTask` plus a discriminator (``adversarial > 0``) and/or
    pseudo-labels (``pseudo_labels``); build it with :meth:`create`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.disc: Discriminator | None = None
        self.disc_optimizer: torch.optim.Optimizer | None = None
        self.prior: list[tuple[np.ndarray, np.ndarray]] = []
        self.prior_rng = np.random.default_rng(self.settings.seed)

    def use_shape_prior(self, pairs: Sequence[tuple[Any, Any]]) -> None:
        """Dense masks of other images (``(image, labels 1..K)`` pairs, channels like the
        training images) shown to D as realistic label maps. Raises :class:`SemSegError`."""
        k = self.data.n_classes
        checked = []
        for i, (image, mask) in enumerate(pairs):
            img, lab = np.asarray(image), np.asarray(mask)
            if img.ndim == 2:
                img = img[None]
            elif img.ndim == 3 and img.shape[-1] in (3, 4) and img.shape[0] not in (3, 4):
                img = np.moveaxis(img, -1, 0)
            if lab.shape != img.shape[1:] or lab.min() < 1 or lab.max() > k:
                raise SemSegError(f"shape prior {i}: the mask must be dense labels 1..{k} of the "
                                  f"image's shape {img.shape[1:]}, got {lab.shape} with values "
                                  f"{lab.min()}..{lab.max()}")
            checked.append((img, lab))
        self.prior = checked

    # ------------------------------------------------------------------ the Task protocol

    def start(self, saved: Mapping[str, Any] | None) -> str:
        message = super().start(saved)
        if self.settings.adversarial > 0:
            channels = self.data.images[0].n_channels + self.data.n_classes
            torch.manual_seed(self.settings.seed + 7)
            self.disc = Discriminator(channels).to(self.device).train()
            self.disc_optimizer = torch.optim.Adam(self.disc.parameters(), lr=D_LEARNING_RATE,
                                                   betas=(0.5, 0.999))
            message += f"; adversarial term {self.settings.adversarial:g}"
        if self.settings.pseudo_labels:
            message += "; pseudo-labels " + ("from the discriminator" if self.disc else
                                             f"above {SOFTMAX_THRESHOLD:g} softmax confidence")
        return message

    def modules(self) -> dict[str, nn.Module]:
        return {} if self.disc is None else {"discriminator": self.disc}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        out = super().optimizers()
        if self.disc_optimizer is not None:
            out["discriminator"] = self.disc_optimizer
        return out

    def step(self, loop: LoopState) -> StepResult:
        x, y = self._batch()
        with autocast(self.device, self.settings.amp):
            logits = self.net(x)
        logits = logits.float()
        loss = self.loss_fn(logits, y, x)
        probs = logits.softmax(1)
        painted = y > 0
        metrics: dict[str, float] = {}
        confidence = None
        if self.disc is not None:
            metrics["loss_d"] = self._discriminator_step(x, y, probs.detach(), painted)
            adversarial, confidence = self._adversarial_term(x, probs)
            loss = loss + self.settings.adversarial * adversarial
        if self.settings.pseudo_labels and loop.fraction() >= PSEUDO_START:
            term, share = self._pseudo_term(logits, probs.detach(), painted, confidence)
            loss = loss + PSEUDO_WEIGHT * term
            metrics["pseudo_labelled"] = share
        optimizer = super().optimizers()["model"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return StepResult(float(loss.detach()), int(x.shape[0]), metrics)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "adversarial": self.settings.adversarial,
                "pseudo_labels": self.settings.pseudo_labels}

    def provenance(self) -> dict[str, Any]:
        out = super().provenance()
        out["adversarial"] = {"weight": self.settings.adversarial,
                              "pseudo_labels": self.settings.pseudo_labels,
                              "shape_prior_images": len(self.prior),
                              "discriminator": "spectral-norm conv 4x4/2 x3 + 3x3, 1:1 updates, "
                                               f"real target {REAL_TARGET}"}
        return out

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        self.prior_rng = np.random.default_rng([self.settings.seed, epoch, 7])

    # ------------------------------------------------------------------ pieces of a step

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.settings
        if self.gen is None or self.sampler is None:
            raise RuntimeError("step() before start() and begin_epoch()")
        zoom = draw_zoom(self.aug, self.gen)
        x, y = read_batch(self.sampler, self.norm, s.batch_size, s.patch_size, zoom)
        x, y = rescale(x.to(self.device), y.to(self.device), s.patch_size)
        x, y = augment_batch(x, y, self.aug, self.gen)
        return x.contiguous(memory_format=torch.channels_last), y

    def _discriminator_step(self, x: torch.Tensor, y: torch.Tensor, probs: torch.Tensor,
                            painted: torch.Tensor) -> float:
        """One update of D; returns its loss."""
        disc, disc_optimizer = self._discriminator()
        bce = F.binary_cross_entropy_with_logits
        x = x.float()
        losses = []
        if painted.any():
            real_map = torch.where(painted[:, None], one_hot(y, probs.shape[1]), probs)
            d_real, d_fake = disc(x, real_map)[:, 0], disc(x, probs)[:, 0]
            losses += [bce(d_real[painted], torch.full_like(d_real[painted], REAL_TARGET)),
                       bce(d_fake[painted], torch.zeros_like(d_fake[painted]))]
        if self.prior:
            px, pm = self._prior_batch(x.shape[0])
            d_prior, d_all = disc(px, pm), disc(x, probs)
            losses += [bce(d_prior, torch.full_like(d_prior, REAL_TARGET)),
                       bce(d_all, torch.zeros_like(d_all))]
        if not losses:
            return float("nan")
        loss = sum(losses[1:], losses[0]) / len(losses)
        disc_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        disc_optimizer.step()
        return float(loss.detach())

    def _discriminator(self) -> tuple[Discriminator, torch.optim.Optimizer]:
        """D and its optimizer, made in :meth:`start` when the adversarial weight is > 0."""
        if self.disc is None or self.disc_optimizer is None:
            raise RuntimeError("the discriminator is made in start() (with adversarial > 0)")
        return self.disc, self.disc_optimizer

    def _adversarial_term(self, x: torch.Tensor, probs: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """The segmenter's adversarial loss (fool D everywhere) and D's confidence map."""
        disc, _ = self._discriminator()
        disc.requires_grad_(False)
        try:
            d = disc(x.float(), probs)[:, 0]
        finally:
            disc.requires_grad_(True)
        term = F.binary_cross_entropy_with_logits(d, torch.ones_like(d))
        return term, torch.sigmoid(d.detach())

    def _pseudo_term(self, logits: torch.Tensor, probs: torch.Tensor, painted: torch.Tensor,
                     confidence: torch.Tensor | None) -> tuple[torch.Tensor, float]:
        if confidence is None:
            confidence, threshold = probs.max(1).values, SOFTMAX_THRESHOLD
        else:
            threshold = D_THRESHOLD
        target = pseudo_labels(probs, painted, confidence, threshold)
        share = float((target > 0).float().mean())
        return partial_cross_entropy(logits, target), share

    def _prior_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` random normalized image patches of the shape prior and their one-hot masks."""
        s = self.settings.patch_size
        rng = self.prior_rng
        images, maps = [], []
        for _ in range(n):
            img, lab = self.prior[int(rng.integers(len(self.prior)))]
            h, w = lab.shape
            y0, x0 = int(rng.integers(max(1, h - s + 1))), int(rng.integers(max(1, w - s + 1)))
            crop = np.zeros((img.shape[0], s, s), np.float32)
            mask = np.zeros((s, s), np.int64)
            part = img[:, y0:y0 + s, x0:x0 + s]
            crop[:, :part.shape[1], :part.shape[2]] = self.norm.apply(part)
            mask[:part.shape[1], :part.shape[2]] = lab[y0:y0 + s, x0:x0 + s]
            images.append(crop)
            maps.append(mask)
        x = torch.from_numpy(np.stack(images)).to(self.device)
        y = torch.from_numpy(np.stack(maps)).to(self.device)
        return x, one_hot(y, self.data.n_classes)
