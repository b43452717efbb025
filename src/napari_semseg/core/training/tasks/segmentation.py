"""Semantic segmentation from painted annotations, as a :class:`~..task.Task`.

Each step reads patches centred near annotated pixels of the training blocks (only those
windows), normalizes, zooms and augments them on the device, and minimizes cross-entropy +
Dice (or focal, affinity) on the annotated pixels with AdamW. Whole blocks of annotations are
held out for validation (mean IoU on their annotated pixels, each block predicted with context
around it). New annotations handed over between epochs are checked and rescanned
(:meth:`SegmentationTask.use_annotations`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ...augment import AugmentConfig, augment_batch, draw_zoom, rescale
from ...device import autocast, free_memory, precision_name
from ...errors import SemSegError
from ...losses import SparseLoss, class_weights
from ...malloc import tune_malloc
from ...metrics import confusion_matrix, scores
from ...models import SemSegModel, add_classes, arch_kwargs, build_model, save_model
from ...normalize import Normalization
from ...pretrained import start_normalization
from ...sampling import AnnotationIndex, PatchSampler, split_blocks
from ...settings import TrainSettings
from ...tiling import round_up
from ..data import TrainData, describe_sources, estimate_training_normalization, read_batch
from ..data import refresh as refresh_data
from ..starts import chosen_start
from ..state import LoopState
from ..task import StepResult, Task

MAX_VALIDATION_BLOCKS = 24
Block = tuple[int, int, int, int]  # (image, plane, block row, block column)


def arch_options(settings: TrainSettings) -> dict[str, Any]:
    """The architecture keywords of the settings; decoder widths left at their default follow
    a changed encoder depth, other widths must match it."""
    derive = str(settings.decoder_channels) == TrainSettings().decoder_channels
    return arch_kwargs(settings.arch, settings.encoder_depth, settings.decoder_channels,
                       derive_widths=derive)


def augmentation(settings: TrainSettings) -> AugmentConfig:
    """The augmentation the settings ask for (none at all with ``augment=False``)."""
    if not settings.augment:
        return AugmentConfig(flips=False, scale=0, brightness=0, contrast=0, gamma=0,
                             channel_shift=0, noise=0, blur=0, cutmix=0, intensity_p=0)
    return AugmentConfig(cutmix=settings.cutmix, scale=settings.scale_jitter,
                         intensity_p=settings.intensity_augment)


def _window(pos: int, size: int, length: int, margin: int) -> tuple[int, int]:
    return max(0, pos - margin), min(length, pos + size + margin)


def _padded(img: np.ndarray, stride: int) -> np.ndarray:
    ph = round_up(img.shape[1], stride) - img.shape[1]
    pw = round_up(img.shape[2], stride) - img.shape[2]
    if ph or pw:
        mode: Literal["reflect", "edge"] = (
            "reflect" if ph < img.shape[1] and pw < img.shape[2] else "edge")
        img = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode=mode)
    return img


@torch.no_grad()
def validate(model: SemSegModel, data: TrainData, blocks: list[Block], norm: Normalization,
             device: torch.device, amp: bool) -> np.ndarray:
    """Confusion matrix of the model on the annotated pixels of the validation blocks.

    Each block is predicted with a context margin of half a block around it (padded to the
    network stride), as prediction of the whole image would see it.
    """
    k = data.n_classes
    cm = np.zeros((k + 1, k + 1), np.int64)
    stride = model.metadata.stride
    b = data.index.block
    margin = round_up(max(b // 2, stride), stride)
    was_training = model.training
    model.eval()
    for i, p, by, bx in blocks:
        src, ann = data.images[i], data.annotations[i]
        h, w = src.plane_shape
        y0, x0 = by * b, bx * b
        y1, x1 = min(h, y0 + b), min(w, x0 + b)
        wy0, wy1 = _window(y0, y1 - y0, h, margin)
        wx0, wx1 = _window(x0, x1 - x0, w, margin)
        img = _padded(src.read(p, slice(wy0, wy1), slice(wx0, wx1)), stride)
        x = torch.from_numpy(norm.apply(img)[None]).to(device)
        with autocast(device, amp):
            logits = model(x)
        pred = (logits[0].float().argmax(0) + 1).cpu().numpy()
        pred = pred[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
        lab = ann.read(p, slice(y0, y1), slice(x0, x1))[0]
        cm += confusion_matrix(pred, lab, k)
    model.train(was_training)
    return cm


def _new_model(data: TrainData, settings: TrainSettings) -> SemSegModel:
    """A new model from the settings' start, its normalization matching what the start
    expects (the start's input mean/std folded into the percentile normalization)."""
    norm = estimate_training_normalization(data.images, settings.normalization,
                                           seed=settings.seed)
    n_channels = data.images[0].n_channels
    channel_names = [f"channel {c}" for c in range(n_channels)]
    if n_channels == 3:
        channel_names = ["red", "green", "blue"]
    model = build_model(settings.arch, settings.encoder, n_channels, data.n_classes,
                        encoder_weights=chosen_start(settings),
                        class_names=data.class_names, class_colors=data.class_colors,
                        channel_names=channel_names, normalization=norm,
                        **arch_options(settings))
    model.metadata.normalization = start_normalization(norm, model.metadata.start)
    return model


def _origin(model: SemSegModel) -> dict[str, Any]:
    """What a fine-tuned model started from, for the training record."""
    meta = model.metadata
    return {"arch": meta.arch, "encoder": meta.encoder, "classes": meta.classes,
            "class_names": list(meta.class_names),
            "training": {k: v for k, v in meta.training.items()
                         if k in ("time_s", "steps", "epochs", "best_metrics")}}


def _adapted_model(base: SemSegModel, data: TrainData, settings: TrainSettings) -> SemSegModel:
    add_classes(base, data.n_classes, data.class_names, data.class_colors)
    if base.metadata.normalization is None:
        base.metadata.normalization = estimate_training_normalization(
            data.images, settings.normalization, seed=settings.seed)
    return base


def _encoder_parameters(model: SemSegModel) -> list[torch.nn.Parameter]:
    encoder = getattr(model.net, "encoder", None)
    return list(encoder.parameters()) if encoder is not None else []


def parameter_groups(model: SemSegModel, settings: TrainSettings) -> list[dict[str, Any]]:
    """AdamW parameter groups: the encoder at ``encoder_lr`` times the learning rate, the
    rest at the learning rate (the schedule scales each group from its own peak)."""
    encoder = {id(p) for p in _encoder_parameters(model)}
    rest = [p for p in model.parameters() if id(p) not in encoder]
    lr = settings.learning_rate
    if not encoder or settings.encoder_lr == 1.0:
        return [{"params": list(model.parameters()), "lr": lr}]
    return [{"params": _encoder_parameters(model), "lr": lr * settings.encoder_lr},
            {"params": rest, "lr": lr}]


class SegmentationTask(Task):
    """Train a :class:`~napari_semseg.core.models.SemSegModel` on sparse or dense annotations.

    Build it with :meth:`create`, which checks everything before any work.
    """

    def __init__(self, net: SemSegModel, data: TrainData, settings: TrainSettings,
                 device: torch.device, loss_fn: SparseLoss,
                 origin: dict[str, Any] | None = None) -> None:
        self.net, self.data, self.settings, self.device = net, data, settings, device
        self.loss_fn, self.origin = loss_fn, origin
        if net.metadata.normalization is None:
            raise SemSegError("the model to train has no normalization; "
                              "make the task with create()")
        self.norm: Normalization = net.metadata.normalization
        self.aug = augmentation(settings)
        self.optimizer: torch.optim.Optimizer | None = None
        self.val_blocks: set[Block] = set()
        self.val_eval: list[Block] = []
        self.sampler: PatchSampler | None = None
        self.gen: torch.Generator | None = None

    @classmethod
    def create(cls, data: TrainData, settings: TrainSettings, device: torch.device,
               base: SemSegModel | None = None) -> SegmentationTask:
        """A new model (``base`` None) or ``base`` with classes added; check the patch size
        against the network stride and the loss settings. Raises :class:`SemSegError`."""
        origin = None if base is None else _origin(base)  # before classes are added
        net = _new_model(data, settings) if base is None else _adapted_model(base, data, settings)
        if settings.patch_size % net.metadata.stride:
            raise SemSegError(f"--patch-size {settings.patch_size} must be a multiple of the "
                              f"network stride {net.metadata.stride}")
        try:
            loss_fn = SparseLoss(settings.loss, None, settings.dice_weight,
                                 settings.label_smoothing, settings.affinity_weight,
                                 settings.affinity_sigma)
        except ValueError as exc:
            raise SemSegError(str(exc)) from None
        return cls(net, data, settings, device, loss_fn, origin)

    # ------------------------------------------------------------------ the Task protocol

    def start(self, saved: Mapping[str, Any] | None) -> str:
        if self.device.type == "cpu":
            tune_malloc()
        self.net.to(self.device).train()
        self.net.to(memory_format=torch.channels_last)  # faster on GPUs and with oneDNN on CPUs
        self.optimizer = torch.optim.AdamW(parameter_groups(self.net, self.settings),
                                           weight_decay=self.settings.weight_decay)
        self._set_encoder_bn()
        keep = {tuple(b) for b in saved.get("validation_blocks", [])} if saved else None
        self._split(keep)
        index = self.data.index
        n_train = int(index.counts[1:].sum()) - sum(
            int(index.block_counts[b][1:].sum()) for b in self.val_blocks)
        meta = self.net.metadata
        return (f"training {meta.arch}/{meta.encoder} on {self.device} with {n_train} annotated "
                f"pixels ({len(self.val_blocks)} validation blocks)")

    def model(self) -> SemSegModel:
        return self.net

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self.optimizer is None:
            raise RuntimeError("the optimizer is made in start(), before any step or checkpoint")
        return {"model": self.optimizer}

    def begin_epoch(self, epoch: int) -> None:
        seed = self.settings.seed
        rng = np.random.default_rng([seed, epoch])
        self.gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        self.sampler = PatchSampler(self.data.images, self.data.annotations, self.data.index,
                                    self.val_blocks, rng, self.settings.class_balance)

    def step(self, loop: LoopState) -> StepResult:
        s = self.settings
        if self.gen is None or self.sampler is None or self.optimizer is None:
            raise RuntimeError("step() before start() and begin_epoch()")
        zoom = draw_zoom(self.aug, self.gen)
        x, y = read_batch(self.sampler, self.norm, s.batch_size, s.patch_size, zoom)
        x, y = x.to(self.device), y.to(self.device)
        x, y = rescale(x, y, s.patch_size)
        x, y = augment_batch(x, y, self.aug, self.gen)
        x = x.contiguous(memory_format=torch.channels_last)
        self._set_encoder_bn()
        with autocast(self.device, s.amp):
            logits = self.net(x)
        loss = self.loss_fn(logits.float(), y, x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if loop.fraction() < s.frozen_encoder:  # decoder first: no update of the encoder
            for p in _encoder_parameters(self.net):
                p.grad = None
        self.optimizer.step()
        return StepResult(float(loss.detach()), int(x.shape[0]))

    def _set_encoder_bn(self) -> None:
        """Keep the encoder's BatchNorm layers in eval mode when the settings freeze them."""
        if self.settings.encoder_bn == "frozen":
            encoder = getattr(self.net.net, "encoder", None)
            for module in encoder.modules() if encoder is not None else ():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def validate(self) -> dict[str, float] | None:
        if not self.val_eval:
            return None
        cm = validate(self.net, self.data, self.val_eval, self.norm, self.device,
                      self.settings.amp)
        return scores(cm, self.data.class_names)

    def save(self, model: nn.Module, path: Path) -> None:
        if not isinstance(model, SemSegModel):
            raise TypeError(f"a segmentation task saves SemSegModels, not {type(model).__name__}")
        save_model(model, path)

    def state(self) -> dict[str, Any]:
        return {"validation_blocks": [list(b) for b in self.val_blocks]}

    def provenance(self) -> dict[str, Any]:
        index, data = self.data.index, self.data
        counts = {name: int(index.counts[k + 1]) for k, name in enumerate(data.class_names)
                  if k + 1 < len(index.counts)}
        out = {"settings": asdict(self.settings), "images": describe_sources(data.images),
               "annotated_pixels": counts, "seed": self.settings.seed,
               "device": str(self.device),
               "precision": precision_name(self.device, self.settings.amp)}
        if self.origin is not None:
            out["fine_tuned_from"] = self.origin
        return out

    def close(self) -> None:
        free_memory(self.device)

    # ------------------------------------------------------------------ annotations

    def use_annotations(self, annotations: Any) -> None:
        """Train on new annotations of the same images from the next step on; validation
        blocks chosen before stay in validation. Raises :class:`SemSegError` to refuse them."""
        self.data = refresh_data(self.data, annotations, self.settings.seed)
        self._split(self.val_blocks)

    def _split(self, keep: set[Block] | None) -> None:
        """Choose the validation blocks (keeping ``keep``), the ones evaluated, and the class
        weights of the loss from the training blocks' pixels."""
        index: AnnotationIndex = self.data.index
        seed = self.settings.seed
        self.val_blocks = split_blocks(index, self.settings.validation, seed, keep)
        counts = index.counts.copy()
        for b in self.val_blocks:
            counts -= index.block_counts[b]
        chosen = sorted(self.val_blocks)
        if len(chosen) > MAX_VALIDATION_BLOCKS:
            pick = np.random.default_rng(seed).choice(len(chosen), MAX_VALIDATION_BLOCKS,
                                                      replace=False)
            chosen = [chosen[j] for j in sorted(pick)]
        self.val_eval = chosen
        self.loss_fn.weight = class_weights(counts[1:]) if self.settings.class_weighting \
            else None
