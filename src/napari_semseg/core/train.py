"""Training from painted annotations: the one generator behind the API, the CLI and the widget.

Data flow: check every input (shapes, dtypes, classes, channels, NaN) before any work; scan the
annotations into an :class:`~napari_semseg.core.sampling.AnnotationIndex`; hold out whole
blocks of annotations for validation; estimate normalization from the images; then, step by
step, read patches centred near annotated pixels (only those windows), normalize, zoom, augment
on the device, and minimize cross-entropy + Dice on annotated pixels with AdamW under a
one-cycle learning rate (driven by steps or by the wall-clock budget). Each epoch ends with a
validation on the held-out blocks, keeps the best model, writes an atomic checkpoint, and picks
up annotations handed over through an :class:`AnnotationFeed`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .augment import AugmentConfig, augment_batch, draw_zoom, rescale
from .device import autocast, free_memory, precision_name, resolve_device
from .errors import SemSegError
from .io import ImageSource, check_finite, open_array, open_image
from .losses import SparseLoss, class_weights
from .malloc import tune_malloc
from .metrics import confusion_matrix, scores
from .models import (PALETTE, SemSegModel, arch_key, as_model, build_model, load_model,
                     save_model)
from .normalize import Normalization, estimate_normalization, sample_pixels
from .progress import drive
from .sampling import AnnotationIndex, PatchSampler, scan_annotations, split_blocks
from .settings import TrainSettings, merge
from .threads import ThreadTuner

MAX_VALIDATION_BLOCKS = 24
DEFAULT_EPOCHS = 50


@dataclass
class TrainProgress:
    """One event of a training run (one per optimizer step, plus one closing each epoch)."""

    step: int
    total_steps: int | None
    epoch: int
    loss: float
    metrics: dict[str, float]
    best: float | None
    elapsed: float
    eta: float | None
    epoch_end: bool
    model: SemSegModel | None
    message: str = ""


class AnnotationFeed:
    """Thread-safe hand-over of new annotations to a running training.

    ``update`` may be called from any thread (e.g. the napari GUI while the user paints); the
    training picks the latest annotations up at the start of its next epoch. numpy arrays are
    copied on ``update`` so later painting does not race with the training.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: Any = None
        self.version = 0

    def update(self, annotations: Any) -> None:
        """Hand over annotations with the same structure as those given to :func:`iter_train`."""
        if isinstance(annotations, (list, tuple)):
            annotations = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a
                           for a in annotations]
        elif isinstance(annotations, np.ndarray):
            annotations = np.array(annotations, copy=True)
        with self._lock:
            self._pending = annotations
            self.version += 1

    def take(self) -> Any:
        """The annotations handed over since the last call, or None."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending


# --------------------------------------------------------------------------- input checks


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _label(i: int, n: int) -> str:
    return "the image" if n == 1 else f"image {i}"


def _raw_array(obj: Any) -> tuple[Any, Path | None, list | None]:
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        arr, geo = open_array(path)
        return arr, path, geo
    if not hasattr(obj, "shape") or not hasattr(obj, "dtype"):
        obj = np.asarray(obj)
    return obj, None, None


def open_annotations(annotation: Any, what: str) -> ImageSource:
    """Open one annotation array (labels: 0 = not annotated, 1..K) without reading it."""
    arr, path, _ = _raw_array(annotation)
    if isinstance(annotation, ImageSource):
        arr = annotation.data
    dtype = np.dtype(arr.dtype)
    if np.issubdtype(dtype, np.floating):
        raise SemSegError(f"annotations of {what} are floating point ({dtype}); give integer "
                          "labels (0 = not annotated, 1..K = classes), e.g. "
                          "labels.astype(numpy.uint8)")
    if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise SemSegError(f"annotations of {what} have type {dtype}; give integer labels")
    if arr.ndim < 2:
        raise SemSegError(f"annotations of {what} have shape {tuple(arr.shape)}; give a 2D (or "
                          "stacked) label image")
    return ImageSource(arr, None, path)


def open_training_image(image: Any, labels_shape: tuple[int, ...], channel_axis: int | None,
                        what: str, expected_channels: int | None = None) -> ImageSource:
    """Open an image whose labels have ``labels_shape``; infer its channel axis from that shape.

    An image with the labels' shape has one channel; one with an extra axis has channels on
    that axis (the last such axis if several fit).
    """
    if isinstance(image, ImageSource):
        source = image
    else:
        arr, path, geo = _raw_array(image)
        shape = tuple(int(s) for s in arr.shape)
        dtype = np.dtype(arr.dtype)
        if not (np.issubdtype(dtype, np.number) or dtype == np.bool_) or \
                np.issubdtype(dtype, np.complexfloating):
            raise SemSegError(f"{what} has pixel type {dtype}; give integer or float pixels")
        if channel_axis is None:
            if shape == labels_shape:
                axis = None
            elif len(shape) == len(labels_shape) + 1:
                fits = [a for a in range(len(shape)) if shape[:a] + shape[a + 1:] == labels_shape]
                if not fits:
                    raise _mismatch(what, shape, labels_shape)
                axis = fits[-1]
            else:
                raise _mismatch(what, shape, labels_shape)
        else:
            if not -len(shape) <= channel_axis < len(shape):
                raise SemSegError(f"channel_axis {channel_axis} is out of range for {what} of "
                                  f"shape {shape}")
            axis = channel_axis
        source = ImageSource(arr, axis, path, geo)
    source = open_image(source, expected_channels=expected_channels)
    if tuple(source.output_shape) != tuple(labels_shape):
        raise _mismatch(what, source.shape, labels_shape)
    return source


def _mismatch(what: str, shape: tuple, labels_shape: tuple) -> SemSegError:
    return SemSegError(f"{what} has shape {tuple(shape)} but its annotations have shape "
                       f"{tuple(labels_shape)}; they must cover the same pixels (annotations "
                       "without the channel axis)")


def _check_finite(source: ImageSource, what: str) -> None:
    try:
        check_finite(source)
    except SemSegError:
        raise SemSegError(f"{what} contains NaN or infinite pixels; replace them (e.g. with "
                          "numpy.nan_to_num) before training") from None


@dataclass
class TrainData:
    """Opened, checked training inputs."""

    images: list[ImageSource]
    annotations: list[ImageSource]
    index: AnnotationIndex
    n_classes: int
    class_names: list[str]
    class_colors: list[str]


def _palette(k: int) -> str:
    return "#%02x%02x%02x" % PALETTE[(k - 1) % len(PALETTE)]


def prepare_data(images: Any, annotations: Any, *, channel_axis: int | None, block: int,
                 model: SemSegModel | None, class_names: list[str] | None,
                 class_colors: list[str] | None, seed: int) -> TrainData:
    """Open and check every input; scan the annotations. Raises :class:`SemSegError`."""
    imgs, anns = _as_list(images), _as_list(annotations)
    if not imgs:
        raise SemSegError("no training image given")
    if len(imgs) != len(anns):
        raise SemSegError(f"{len(imgs)} image(s) but {len(anns)} annotation array(s); give one "
                          "annotation array per image")
    n = len(imgs)
    expected = model.metadata.in_channels if model is not None else None
    ann_sources, img_sources = [], []
    for i, (img, ann) in enumerate(zip(imgs, anns)):
        what = _label(i, n)
        a = open_annotations(ann, what)
        s = open_training_image(img, a.shape, channel_axis, what)
        if expected is not None and s.n_channels != expected:
            raise SemSegError(f"{what} has {s.n_channels} channel(s) but the model to fine-tune "
                              f"expects {expected} ({', '.join(model.metadata.channel_names)}); "
                              "train a new model (model=None) or give matching images")
        if img_sources and s.n_channels != img_sources[0].n_channels:
            raise SemSegError(f"{what} has {s.n_channels} channel(s) but image 0 has "
                              f"{img_sources[0].n_channels}; all training images need the same "
                              "channels")
        _check_finite(s, what)
        ann_sources.append(a)
        img_sources.append(s)
    if model is not None:
        k_model = model.metadata.classes
    else:
        k_model = None
    k = len(class_names) if class_names else None
    index = scan_annotations(ann_sources, block, seed=seed, n_classes=None)
    top = index.max_label
    if top == 0:
        raise SemSegError("no annotated pixel: paint at least two classes (labels 1..K; 0 means "
                          "not annotated)")
    if k is None:
        k = k_model if k_model is not None else top
    if top > k:
        if class_names:
            raise SemSegError(f"annotations use class {top} but class_names lists only {k} "
                              "classes; give one name per class")
        raise SemSegError(f"annotations use class {top} but the model has {k} classes "
                          f"({', '.join(model.metadata.class_names)}); pass class_names with "
                          f"{top} names to add classes to it")
    if k_model is not None and k < k_model:
        raise SemSegError(f"class_names lists {k} classes but the model has {k_model}; a model "
                          "can gain classes but not lose them")
    present = index.classes_present
    if len(present) < 2:
        raise SemSegError(f"only class {present[0]} is annotated; paint at least two classes "
                          "so the network can learn to tell them apart")
    if index.counts.shape[0] < k + 1:
        counts = np.zeros(k + 1, np.int64)
        counts[:len(index.counts)] = index.counts
        index.counts = counts
        index.points += [np.zeros((0, 4), np.int64)] * (k + 1 - len(index.points))
        index.weights += [np.zeros(0)] * (k + 1 - len(index.weights))
    names = list(class_names) if class_names else []
    if not names:
        names = list(model.metadata.class_names) if model is not None else []
        names += [f"class {c}" for c in range(len(names) + 1, k + 1)]
    colors = list(class_colors) if class_colors else []
    if colors and len(colors) != k:
        raise SemSegError(f"class_colors has {len(colors)} entries but there are {k} classes")
    if not colors:
        colors = list(model.metadata.class_colors) if model is not None else []
        colors += [_palette(c) for c in range(len(colors) + 1, k + 1)]
    return TrainData(img_sources, ann_sources, index, k, names, colors)


def estimate_training_normalization(images: list[ImageSource], mode: str = "percentile",
                                    max_pixels: int = 2**22, seed: int = 0) -> Normalization:
    """Normalization statistics from a bounded sample spread over all training images."""
    if len(images) == 1:
        return estimate_normalization(images[0], mode=mode, max_pixels=max_pixels, seed=seed)
    per = max(4096, max_pixels // len(images))
    sample = np.concatenate([sample_pixels(s, max_pixels=per, seed=seed + i)
                             for i, s in enumerate(images)], axis=1)
    pool = ImageSource(sample[:, None, :], 0)
    return estimate_normalization(pool, mode=mode, max_pixels=sample.shape[1] + 1, seed=seed)


# --------------------------------------------------------------------------- model set-up


UNET_FAMILY = ("unet", "unetplusplus", "manet")


def _arch_kwargs(settings: TrainSettings) -> dict[str, Any]:
    """``encoder_depth`` and ``decoder_channels`` for Unet-family architectures (others use
    their own defaults). Decoder widths that do not match the depth are derived from it."""
    if arch_key(settings.arch) not in UNET_FAMILY:
        return {}
    kw: dict[str, Any] = {}
    depth = settings.encoder_depth
    if depth is not None:
        kw["encoder_depth"] = int(depth)
    if settings.decoder_channels:
        try:
            widths = [int(c) for c in str(settings.decoder_channels).split(",")]
        except ValueError:
            raise SemSegError(f"--decoder-channels must be comma-separated integers, got "
                              f"{settings.decoder_channels!r}") from None
        d = depth if depth is not None else 5
        if len(widths) != d:
            if str(settings.decoder_channels) != TrainSettings().decoder_channels:
                raise SemSegError(f"--decoder-channels has {len(widths)} widths but "
                                  f"--encoder-depth is {d}; give one width per stage")
            widths = [max(16, 64 >> i) for i in range(d)]
        kw["decoder_channels"] = widths
    return kw


def _head_conv(net: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.Conv2d]:
    """The last Conv2d of the segmentation head (the one producing class logits)."""
    head = getattr(net, "segmentation_head", None)
    if head is None:
        raise SemSegError("this architecture has no segmentation_head; cannot add classes")
    last = None
    for name, mod in head.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            last = (name, mod)
    if last is None:
        raise SemSegError("no convolution in the segmentation head; cannot add classes")
    return head, last[0], last[1]


def add_classes(model: SemSegModel, n_classes: int, names: list[str], colors: list[str]) -> None:
    """Grow the model's output layer to ``n_classes``, keeping the weights of existing classes."""
    meta = model.metadata
    old = meta.classes
    if n_classes > old:
        head, name, conv = _head_conv(model.net)
        new = torch.nn.Conv2d(conv.in_channels, n_classes, conv.kernel_size, conv.stride,
                              conv.padding, conv.dilation, conv.groups, conv.bias is not None)
        with torch.no_grad():
            new.weight[:old] = conv.weight
            new.weight[old:] = \
                torch.randn_like(new.weight[old:]) * conv.weight.std() * 0.5
            if conv.bias is not None:
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


# --------------------------------------------------------------------------- checkpoints


def _state_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".state")


def write_checkpoint(path: Path, model: SemSegModel, optimizer: torch.optim.Optimizer,
                     best_state: dict[str, torch.Tensor] | None, state: dict[str, Any]) -> None:
    """Write the model (atomically, via :func:`save_model`) and a ``.state`` file next to it
    with the optimizer state, the best weights so far and the loop counters (also atomic)."""
    from safetensors.torch import save_file

    save_model(model, path)
    tensors: dict[str, torch.Tensor] = {}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for key, val in st.items():
            t = val if torch.is_tensor(val) else torch.tensor(val)
            tensors[f"opt/{pid}/{key}"] = t.detach().cpu().contiguous()
    if best_state is not None:
        for key, val in best_state.items():
            tensors[f"best/{key}"] = val.detach().cpu().contiguous()
    meta = {"param_groups": opt["param_groups"], **state}
    tmp = _state_path(path).with_name(_state_path(path).name + ".tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)})
    os.replace(tmp, _state_path(path))


def read_checkpoint_state(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """The loop state and tensors of a checkpoint's ``.state`` file, or None if absent."""
    from safetensors import safe_open

    sp = _state_path(path)
    if not sp.exists():
        return None
    try:
        with safe_open(str(sp), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("state", "{}"))
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # damaged state file
        raise SemSegError(f"checkpoint state {sp} is damaged ({exc}); delete it to start over") \
            from exc
    return meta, tensors


def _restore_optimizer(optimizer: torch.optim.Optimizer, meta: dict[str, Any],
                       tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        if key.startswith("opt/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = val
    sd = {"state": state, "param_groups": meta["param_groups"]}
    try:
        optimizer.load_state_dict(sd)
    except (ValueError, KeyError):
        pass  # a different optimizer layout (e.g. classes added): start its state fresh


# --------------------------------------------------------------------------- the loop


def one_cycle(fraction: float, peak: float, warmup: float = 0.1, start_div: float = 25.0,
              end_div: float = 1000.0) -> float:
    """One-cycle learning rate at ``fraction`` (0..1) of training: linear warm-up from
    ``peak / start_div`` to ``peak``, then cosine annealing to ``peak / end_div``."""
    f = min(max(fraction, 0.0), 1.0)
    if f < warmup:
        return peak / start_div + (peak - peak / start_div) * f / warmup
    t = (f - warmup) / max(1e-9, 1 - warmup)
    low = peak / end_div
    return low + (peak - low) * 0.5 * (1 + math.cos(math.pi * t))


def _window(pos: int, size: int, length: int, margin: int) -> tuple[int, int]:
    return max(0, pos - margin), min(length, pos + size + margin)


@torch.no_grad()
def validate(model: SemSegModel, data: TrainData, blocks: list[tuple[int, int, int, int]],
             norm: Normalization, device: torch.device, amp: bool) -> np.ndarray:
    """Confusion matrix of the model on the annotated pixels of the validation blocks.

    Each block is predicted with a context margin of half a block around it (padded to the
    network stride), as prediction of the whole image would see it.
    """
    from .tiling import round_up

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
        img = src.read(p, slice(wy0, wy1), slice(wx0, wx1))
        ph = round_up(img.shape[1], stride) - img.shape[1]
        pw = round_up(img.shape[2], stride) - img.shape[2]
        if ph or pw:
            mode = "reflect" if ph < img.shape[1] and pw < img.shape[2] else "edge"
            img = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode=mode)
        x = torch.from_numpy(norm.apply(img)[None]).to(device)
        with autocast(device, amp):
            logits = model(x)
        pred = (logits[0].float().argmax(0) + 1).cpu().numpy()
        pred = pred[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
        lab = ann.read(p, slice(y0, y1), slice(x0, x1))[0]
        cm += confusion_matrix(pred, lab, k)
    model.train(was_training)
    return cm


def _batch(sampler: PatchSampler, norm: Normalization, n: int, patch: int, zoom: float,
           ) -> tuple[torch.Tensor, torch.Tensor]:
    size = max(8, int(round(patch * zoom)))
    imgs, labs = [], []
    for _ in range(n):
        img, lab = sampler.read(size)
        imgs.append(norm.apply(img))
        labs.append(lab)
    return torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(labs))


def _info(sources: list[ImageSource]) -> list[dict[str, Any]]:
    return [{"shape": list(s.shape), "dtype": str(s.dtype), "channel_axis": s.channel_axis,
             "path": str(s.path) if s.path else None} for s in sources]


def iter_train(images: Any, annotations: Any, settings: TrainSettings | None = None, *,
               model: SemSegModel | str | os.PathLike | None = None,
               class_names: list[str] | None = None, class_colors: list[str] | None = None,
               channel_axis: int | None = None, feed: AnnotationFeed | None = None,
               should_stop: Callable[[], bool] | None = None,
               **options: Any) -> Generator[TrainProgress, None, SemSegModel]:
    """Train a model on painted annotations; yield :class:`TrainProgress`; return the model.

    Every check (shapes, label types, classes, channels, NaN, settings) runs when this function
    is called, before the generator is returned, so bad input raises :class:`SemSegError` at
    once. See :func:`train` for the parameters. ``should_stop()`` returning True ends the run
    after the current step and returns the best model so far.
    """
    settings = merge(TrainSettings, settings, options).validated()
    device = resolve_device(settings.device)
    checkpoint = Path(settings.checkpoint) if settings.checkpoint else None
    resume_state = None
    base: SemSegModel | None = None
    if checkpoint is not None and settings.resume and checkpoint.exists():
        base = load_model(checkpoint)
        resume_state = read_checkpoint_state(checkpoint)
    elif model is not None:
        base = as_model(model)
        base = copy.deepcopy(base) if base is model else base
    if base is not None:
        base = base.cpu()
    patch = settings.patch_size
    block = max(32, patch // 2)
    data = prepare_data(images, annotations, channel_axis=channel_axis, block=block, model=base,
                        class_names=class_names, class_colors=class_colors, seed=settings.seed)
    torch.manual_seed(settings.seed)
    if base is None:
        norm = estimate_training_normalization(data.images, settings.normalization,
                                               seed=settings.seed)
        channel_names = [f"channel {c}" for c in range(data.images[0].n_channels)]
        if data.images[0].n_channels == 3:
            channel_names = ["red", "green", "blue"]
        net = build_model(settings.arch, settings.encoder, data.images[0].n_channels,
                          data.n_classes, class_names=data.class_names,
                          class_colors=data.class_colors, channel_names=channel_names,
                          normalization=norm, **_arch_kwargs(settings))
        origin = None
    else:
        net = base
        origin = {"arch": net.metadata.arch, "encoder": net.metadata.encoder,
                  "classes": net.metadata.classes, "class_names": list(net.metadata.class_names),
                  "training": {k: v for k, v in net.metadata.training.items()
                               if k in ("time_s", "steps", "epochs", "best_metrics")}}
        add_classes(net, data.n_classes, data.class_names, data.class_colors)
        if net.metadata.normalization is None:
            net.metadata.normalization = estimate_training_normalization(
                data.images, settings.normalization, seed=settings.seed)
        norm = net.metadata.normalization
    if patch % net.metadata.stride:
        raise SemSegError(f"--patch-size {patch} must be a multiple of the network stride "
                          f"{net.metadata.stride}")
    try:
        loss_fn = SparseLoss(settings.loss, None, settings.dice_weight, settings.label_smoothing,
                             settings.affinity_weight, settings.affinity_sigma)
    except ValueError as exc:
        raise SemSegError(str(exc)) from None
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    return _loop(net, data, norm, settings, device, loss_fn, checkpoint, resume_state, origin,
                 feed, should_stop)


def _loop(model: SemSegModel, data: TrainData, norm: Normalization, settings: TrainSettings,
          device: torch.device, loss_fn: SparseLoss, checkpoint: Path | None,
          resume_state: tuple[dict[str, Any], dict[str, torch.Tensor]] | None,
          origin: dict[str, Any] | None, feed: AnnotationFeed | None,
          should_stop: Callable[[], bool] | None) -> Generator[TrainProgress, None, SemSegModel]:
    seed = settings.seed
    if device.type == "cpu":
        tune_malloc()
    started = time.perf_counter()
    aug = AugmentConfig(cutmix=settings.cutmix, scale=settings.scale_jitter,
                        intensity_p=settings.intensity_augment)
    if not settings.augment:
        aug = AugmentConfig(flips=False, scale=0, brightness=0, contrast=0, gamma=0,
                            channel_shift=0, noise=0, blur=0, cutmix=0, intensity_p=0)
    epochs = settings.epochs
    if epochs is None and settings.time_budget is None:
        epochs = DEFAULT_EPOCHS
    spe = settings.steps_per_epoch
    total_steps = epochs * spe if epochs is not None else None
    budget = settings.time_budget

    model.to(device).train()
    model.to(memory_format=torch.channels_last)  # faster on GPUs and with oneDNN on CPUs
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    start_epoch, step, elapsed0 = 0, 0, 0.0
    best: float | None = None
    best_metrics: dict[str, float] = {}
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch = 0
    val_blocks_prev: set | None = None
    history: list[dict[str, Any]] = []
    if resume_state is not None:
        meta, tensors = resume_state
        _restore_optimizer(optimizer, meta, tensors)
        start_epoch, step = int(meta.get("epoch", 0)), int(meta.get("step", 0))
        elapsed0 = float(meta.get("elapsed", 0.0))
        best = meta.get("best")
        best_metrics = meta.get("best_metrics", {})
        best_epoch = int(meta.get("best_epoch", 0))
        history = meta.get("history", [])
        val_blocks_prev = {tuple(b) for b in meta.get("validation_blocks", [])}
        bs = {k[5:]: v for k, v in tensors.items() if k.startswith("best/")}
        best_state = bs or None

    def prepare_split(index: AnnotationIndex, keep: set | None
                      ) -> tuple[set, list, torch.Tensor | None]:
        val = split_blocks(index, settings.validation, seed, keep)
        counts = index.counts.copy()
        for b in val:
            counts -= index.block_counts[b]
        weight = class_weights(counts[1:]) if settings.class_weighting else None
        chosen = sorted(val)
        if len(chosen) > MAX_VALIDATION_BLOCKS:
            pick = np.random.default_rng(seed).choice(len(chosen), MAX_VALIDATION_BLOCKS,
                                                      replace=False)
            chosen = [chosen[j] for j in sorted(pick)]
        return val, chosen, weight

    val_blocks, val_eval, weight = prepare_split(data.index, val_blocks_prev)
    loss_fn.weight = weight
    n_train = int(data.index.counts[1:].sum()) - sum(
        int(data.index.block_counts[b][1:].sum()) for b in val_blocks)
    message = (f"training {model.metadata.arch}/{model.metadata.encoder} on {device} with "
               f"{n_train} annotated pixels ({len(val_blocks)} validation blocks)")
    metrics: dict[str, float] = dict(best_metrics)
    yield TrainProgress(step, total_steps, start_epoch, float("nan"), metrics, best, elapsed0,
                        None, False, None, message)

    def elapsed() -> float:
        return elapsed0 + time.perf_counter() - started

    def fraction() -> float:
        f = 0.0
        if total_steps:
            f = max(f, step / total_steps)
        if budget:
            f = max(f, elapsed() / budget)
        return f

    tuner = ThreadTuner(device.type == "cpu" and epochs is None and budget is not None,
                        settings.threads if device.type == "cpu" else None)
    patches = 0
    session_steps = 0

    def loop_state() -> dict[str, Any]:
        """The loop's state for the provenance and the checkpoint (read when called)."""
        return {"epoch": epoch, "step": step, "elapsed": elapsed(), "best": best,
                "best_metrics": best_metrics, "best_epoch": best_epoch, "history": history,
                "validation_blocks": [list(b) for b in val_blocks],
                "threads": tuner.describe() if device.type == "cpu" else None}
    epoch = start_epoch
    stopped = False
    no_improve = 0
    last_metrics: dict[str, float] = dict(metrics)
    try:
        while not stopped:
            if epochs is not None and epoch >= epochs:
                break
            if budget is not None and elapsed() >= budget:
                break
            # pick up new annotations between epochs
            msg = ""
            if feed is not None:
                pending = feed.take()
                if pending is not None:
                    try:
                        data = _refresh(data, pending, settings)
                        val_blocks, val_eval, weight = prepare_split(data.index, val_blocks)
                        loss_fn.weight = weight
                        msg = "using the new annotations"
                    except SemSegError as exc:
                        msg = f"new annotations ignored: {exc}"
            rng = np.random.default_rng([seed, epoch])
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            sampler = PatchSampler(data.images, data.annotations, data.index, val_blocks, rng,
                                   settings.class_balance)
            running, n_loss = 0.0, 0
            for _ in range(spe):
                tuner.before_step()
                t_step = time.perf_counter()
                lr = one_cycle(fraction(), settings.learning_rate)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                zoom = draw_zoom(aug, gen)
                x, y = _batch(sampler, norm, settings.batch_size, settings.patch_size, zoom)
                x, y = x.to(device), y.to(device)
                x, y = rescale(x, y, settings.patch_size)
                x, y = augment_batch(x, y, aug, gen)
                x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device, settings.amp):
                    logits = model(x)
                loss = loss_fn(logits.float(), y, x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_value = float(loss.detach())
                tuner.after_step(time.perf_counter() - t_step)
                step += 1
                session_steps += 1
                patches += x.shape[0]
                running += loss_value
                n_loss += 1
                el = elapsed()
                eta = _eta(el, elapsed0, session_steps, step, total_steps, budget)
                yield TrainProgress(step, total_steps, epoch, running / n_loss, last_metrics,
                                    best, el, eta, False, None, msg)
                msg = ""
                if should_stop is not None and should_stop():
                    stopped = True
                    break
                if budget is not None and el >= budget:
                    break
                if total_steps is not None and step >= total_steps:
                    break
            epoch += 1
            # validation, best model, checkpoint
            if val_eval:
                cm = validate(model, data, val_eval, norm, device, settings.amp)
                last_metrics = scores(cm, data.class_names)
                score = last_metrics["mean_iou"]
                if best is None or score >= best:
                    if best is None or score > best:
                        no_improve = 0
                    best, best_metrics, best_epoch = score, dict(last_metrics), epoch
                    best_state = {k: v.detach().cpu().clone()
                                  for k, v in model.state_dict().items()}
                else:
                    no_improve += 1
            else:
                best_state = None
            history.append({"epoch": epoch, "step": step, "loss": running / max(1, n_loss),
                            "mean_iou": last_metrics.get("mean_iou"), "elapsed": elapsed()})
            state = loop_state()
            model.metadata.training = _provenance(settings, data, state, patches, session_steps,
                                                  started, device, origin, finished=False)
            if checkpoint is not None:
                write_checkpoint(checkpoint, model, optimizer, best_state, state)
            preview = _best_copy(model, best_state)
            el = elapsed()
            eta = _eta(el, elapsed0, session_steps, step, total_steps, budget)
            early = (settings.early_stopping is not None and val_eval
                     and no_improve >= settings.early_stopping)
            note = f"epoch {epoch}: loss {running / max(1, n_loss):.4f}"
            if tuner.enabled:
                note += f" [{tuner.describe()}]"
            if val_eval:
                note += f", validation mean IoU {last_metrics['mean_iou']:.3f}"
            if early:
                note += f"; early stop after {no_improve} epochs without improvement"
            yield TrainProgress(step, total_steps, epoch, running / max(1, n_loss), last_metrics,
                                best, el, eta, True, preview, note)
            if early:
                break
        final = _best_copy(model, best_state)
        state = loop_state()
        final.metadata.training = _provenance(settings, data, state, patches, session_steps,
                                              started, device, origin, finished=True)
        if checkpoint is not None:  # the finished model; no loop state left to resume
            save_model(final, checkpoint)
            _state_path(checkpoint).unlink(missing_ok=True)
        return final.eval()
    finally:
        tuner.restore()
        free_memory(device)


def _eta(el: float, el0: float, session_steps: int, step: int, total: int | None,
         budget: float | None) -> float | None:
    candidates = []
    if total is not None and session_steps:
        candidates.append((el - el0) / session_steps * max(0, total - step))
    if budget is not None:
        candidates.append(max(0.0, budget - el))
    return min(candidates) if candidates else None


def _best_copy(model: SemSegModel, best_state: dict[str, torch.Tensor] | None) -> SemSegModel:
    """An independent CPU copy of the model carrying the best weights (or the current ones)."""
    out = copy.deepcopy(model).cpu().eval()
    if best_state is not None:
        out.load_state_dict(best_state)
    out.metadata = copy.deepcopy(model.metadata)
    return out


def _provenance(settings: TrainSettings, data: TrainData, state: dict[str, Any], patches: int,
                session_steps: int, started: float, device: torch.device,
                origin: dict[str, Any] | None, finished: bool) -> dict[str, Any]:
    session = time.perf_counter() - started
    counts = {name: int(data.index.counts[k + 1]) for k, name in enumerate(data.class_names)
              if k + 1 < len(data.index.counts)}
    out = {
        "settings": asdict(settings),
        "images": _info(data.images),
        "annotated_pixels": counts,
        "epochs": state["epoch"],
        "steps": state["step"],
        "best_epoch": state["best_epoch"],
        "best_metrics": state["best_metrics"],
        "history": state["history"][-200:],
        "time_s": round(state["elapsed"], 2),
        "seed": settings.seed,
        "device": str(device),
        "cpu_threads": state.get("threads"),
        "precision": precision_name(device, settings.amp),
        "patches_per_s": round(patches / session, 3) if session > 0 else None,
        "finished": finished,
    }
    if origin is not None:
        out["fine_tuned_from"] = origin
    return json.loads(json.dumps(out, default=str))


def _refresh(data: TrainData, annotations: Any, settings: TrainSettings) -> TrainData:
    """New annotations for the same images: check and rescan them."""
    anns = _as_list(annotations)
    if len(anns) != len(data.images):
        raise SemSegError(f"{len(anns)} annotation array(s) for {len(data.images)} image(s)")
    sources = []
    for i, (a, s) in enumerate(zip(anns, data.images)):
        src = open_annotations(a, _label(i, len(anns)))
        if tuple(src.shape) != tuple(s.output_shape):
            raise SemSegError(f"annotations {i} have shape {src.shape}, expected {s.output_shape}")
        sources.append(src)
    index = scan_annotations(sources, data.index.block, seed=settings.seed,
                             n_classes=data.n_classes)
    if index.max_label > data.n_classes:
        raise SemSegError(f"class {index.max_label} is not one of the model's {data.n_classes} "
                          "classes; restart training to add it")
    if len(index.classes_present) < 2:
        raise SemSegError("fewer than two classes annotated")
    return TrainData(data.images, sources, index, data.n_classes, data.class_names,
                     data.class_colors)


def train(images: Any, annotations: Any, *, model: SemSegModel | str | os.PathLike | None = None,
          arch: str = "unet", encoder: str = "resnet18", epochs: int | None = None,
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
        Architecture and encoder of a new model (see :class:`TrainSettings`).
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
    extra = {k: options.pop(k) for k in ("class_names", "class_colors", "channel_axis", "feed",
                                         "should_stop") if k in options}
    values = dict(arch=arch, encoder=encoder, epochs=epochs, time_budget=time_budget,
                  device=device, validation=validation, seed=seed)
    if settings is not None:  # keep the settings' values for arguments left at their defaults
        defaults = TrainSettings()
        values = {k: v for k, v in values.items() if v != getattr(defaults, k)}
    values.update(options)
    stop_flag = {"stop": False}
    user_stop = extra.pop("should_stop", None)

    def should_stop() -> bool:
        return stop_flag["stop"] or bool(user_stop and user_stop())

    job = iter_train(images, annotations, settings, model=model, should_stop=should_stop,
                     **extra, **values)

    def relay(event: TrainProgress) -> None:
        if callback is not None and callback(event) is False:
            stop_flag["stop"] = True

    return drive(job, relay)
