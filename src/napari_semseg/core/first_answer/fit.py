"""Fit a :class:`FeatureHeadNet` on painted pixels in seconds: the "first answer".

1. scan the annotations and draw a class-balanced sample of painted pixels;
2. compute their feature vectors window by window (:mod:`.features`; frozen encoder, only the
   windows that hold sampled pixels);
3. train the head (an MLP on the standardized vectors, class-balanced cross-entropy, Adam);
4. copy the head into the network's 1x1 convolutions: the result is an ordinary
   :class:`~napari_semseg.core.models.SemSegModel` (arch ``feature-head``) that
   :func:`~napari_semseg.segment` runs tile by tile and :func:`~napari_semseg.save_model`
   writes as safetensors + JSON like any other model.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..device import resolve_device
from ..errors import SemSegError
from ..io import ImageSource
from ..models import SemSegModel, build_model
from ..normalize import Normalization
from ..sampling import scan_annotations
from .features import FeatureProgress, Holdout, PixelSample, choose_pixels, iter_pixel_features
from .net import DEFAULT_HIDDEN, DEFAULT_SCALES, DEFAULT_TAPS, FeatureHeadNet

ARCH = "feature-head"
ENCODER = "mobilenet_v2"
# The model's halo, and the context read around each feature window. With the engine's default
# overlap of 2 x halo = 192 pixels, tiles agree with a whole-image pass on 99.988 % of the labels
# of the EM sample (overlap 128: 99.91 %, 64: 99.1 %; measured with a model fitted on the EM
# training sample, 256-448 px tiles, fp32).
HALO = 96
FEATURE_SHARE = 0.7  # of a time budget for features; the rest trains the head


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class FeatureHeadSettings:
    """Settings of :func:`fit_feature_head` (the instant first model)."""

    time_budget: float | None = _opt(None, "budget in seconds for features and fit (default: "
                                           "all sampled pixels, all steps)")
    scales: tuple[int, ...] = _opt(DEFAULT_SCALES, "image scales (pooling factors) of the "
                                                   "pretrained features")
    taps: tuple[Any, ...] = _opt(DEFAULT_TAPS, "MobileNetV2 blocks whose outputs are features "
                                               "(one tuple for all scales, or one per scale)")
    hidden: int = _opt(DEFAULT_HIDDEN, "hidden units of the MLP head (0: linear head)")
    raw: bool = _opt(True, "also feed the normalized pixel values to the head")
    filters: tuple[float, ...] = _opt((), "scales (Gaussian sigmas, pixels) of classic filter "
                                          "responses also fed to the head (empty: none)")
    max_pixels: int = _opt(40_000, "painted pixels sampled (class-balanced)", min=100)
    block: int = _opt(1024, "edge of the windows in which features are computed", min=64)
    context: int = _opt(HALO, "image context read around each window, in pixels", min=0)
    steps: int = _opt(200, "optimizer steps of the head", min=1)
    batch_size: int = _opt(1024, "pixels per step", min=16)
    learning_rate: float = _opt(1e-2, "Adam learning rate of the head")
    weight_decay: float = _opt(0.1, "weight decay (L2) of the head: painted pixels are few "
                                    "and clustered, a strong penalty generalizes best")
    device: str = _opt("cpu", "'cpu', 'auto', 'cuda', 'cuda:N', 'mps'")
    seed: int = _opt(0, "random seed")

    def validated(self) -> FeatureHeadSettings:
        """Return self after checking value ranges; raise :class:`SemSegError` otherwise."""
        for f in self.__dataclass_fields__.values():
            low = f.metadata.get("min")
            if low is not None and getattr(self, f.name) < low:
                raise SemSegError(f"{f.name} must be at least {low}, got {getattr(self, f.name)}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise SemSegError(f"time_budget must be positive seconds, got {self.time_budget}")
        if self.hidden < 0:
            raise SemSegError(f"hidden must be 0 (linear head) or more, got {self.hidden}")
        return self


@dataclass
class FitProgress:
    """Progress of :func:`iter_fit_feature_head`: stage ``"features"`` or ``"head"``."""

    stage: str
    done: int
    total: int
    elapsed: float
    message: str = ""


# --------------------------------------------------------------------------- head training


def standardize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation (constant features get std 1)."""
    mean = x.mean(0)
    std = x.std(0)
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


def train_head(sample: PixelSample, n_classes: int, settings: FeatureHeadSettings,
               deadline: float = math.inf, clock: Callable[[], float] = time.perf_counter) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                                                    torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Train the MLP (or linear) head on standardized features; class-balanced loss.

    Returns the layers' ``(weight, bias)``, the standardization ``mean`` and ``std`` and a
    summary (steps run, training accuracy).
    """
    g = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    mean, std = standardize(sample.features)
    x = (sample.features - mean) / std
    y = sample.labels
    counts = torch.bincount(y, minlength=n_classes).float()
    weight = torch.where(counts > 0, counts.sum() / (counts.clamp(min=1) * (counts > 0).sum()),
                         torch.zeros_like(counts))
    dims = [x.shape[1]] + ([settings.hidden] if settings.hidden else []) + [n_classes]
    layers = [torch.nn.Linear(a, b) for a, b in itertools.pairwise(dims)]
    mlp = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1]) if settings.hidden \
        else layers[0]
    opt = torch.optim.Adam(mlp.parameters(), lr=settings.learning_rate,
                           weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings.steps)
    n, batch, step = len(x), min(settings.batch_size, len(x)), 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is as fast and immune to CPU load
    try:
        while step < settings.steps and (step == 0 or clock() < deadline):
            idx = torch.randint(0, n, (batch,), generator=g)
            loss = F.cross_entropy(mlp(x[idx]), y[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        with torch.no_grad():
            accuracy = float((mlp(x).argmax(1) == y).float().mean())
    finally:
        torch.set_num_threads(threads)
    out = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in layers]
    return out, mean, std, {"steps": step, "train_accuracy": round(accuracy, 4),
                            "final_loss": round(loss.item(), 4)}


# --------------------------------------------------------------------------- the model


def new_model(in_channels: int, n_classes: int, settings: FeatureHeadSettings,
              encoder_state: Mapping[str, torch.Tensor], *, class_names: list[str] | None,
              class_colors: list[str] | None, channel_names: list[str] | None,
              normalization: Normalization) -> SemSegModel:
    """A feature-head model with pretrained encoder weights and an untrained head."""
    model = build_model(ARCH, ENCODER, in_channels, n_classes, class_names=class_names,
                        class_colors=class_colors, channel_names=channel_names,
                        normalization=normalization, halo=HALO, scales=list(settings.scales),
                        taps=list(settings.taps), hidden=settings.hidden, raw=settings.raw,
                        filters=list(settings.filters))
    assert isinstance(model.net, FeatureHeadNet)  # build_model(ARCH) makes a FeatureHeadNet
    try:
        model.net.load_encoder_state(dict(encoder_state))
    except (RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise SemSegError(f"encoder_state is not MobileNetV2 weights (features.N.*): {first}"
                          ) from exc
    return model


def iter_fit_feature_head(images: list[ImageSource], annotations: list[ImageSource], *,
                          n_classes: int, normalization: Normalization,
                          encoder_state: Mapping[str, torch.Tensor],
                          settings: FeatureHeadSettings,
                          class_names: list[str] | None = None,
                          class_colors: list[str] | None = None,
                          channel_names: list[str] | None = None,
                          holdout: Holdout | None = None,
                          clock: Callable[[], float] = time.perf_counter,
                          ) -> Generator[FitProgress, None, SemSegModel]:
    """Fit a feature-head model on opened, checked inputs; yield progress; return the model.

    This is the entry point for the training engine, which has already opened and checked the
    images and annotations (one :class:`~napari_semseg.core.io.ImageSource` each, annotations
    with one channel, labels 0 = not painted, 1..``n_classes``). ``holdout`` marks painted
    pixels to leave out, given rows of ``(image, plane, y, x)`` (the engine's validation
    blocks), so that the first model and the CNN are compared on the same unseen pixels.
    ``clock`` measures the time budget (``time.process_time``: CPU seconds of this process,
    what a quiet machine would give on a shared one). Every check runs when this function is
    called, before the generator is returned.
    """
    started = clock()
    settings.validated()
    rng = np.random.default_rng(settings.seed)
    index = scan_annotations(annotations, settings.block, seed=settings.seed, n_classes=n_classes)
    groups = choose_pixels(index, n_classes, settings.max_pixels, rng, holdout)
    model = new_model(images[0].n_channels, n_classes, settings, encoder_state,
                      class_names=class_names, class_colors=class_colors,
                      channel_names=channel_names, normalization=normalization)
    return _fit(model, images, groups, index.counts, settings, rng, started, clock)


def _fit(model: SemSegModel, images: list[ImageSource], groups: dict, counts: np.ndarray,
         settings: FeatureHeadSettings, rng: np.random.Generator, started: float,
         clock: Callable[[], float]) -> Generator[FitProgress, None, SemSegModel]:
    """The work of :func:`iter_fit_feature_head`, once every input is checked."""
    budget = settings.time_budget
    end = started + budget if budget else math.inf
    device = resolve_device(settings.device)
    net, norm = model.net, model.metadata.normalization
    if not isinstance(net, FeatureHeadNet) or norm is None:
        raise RuntimeError("_fit needs a feature-head model with a normalization (_new_model)")
    net.to(device).eval()
    job = iter_pixel_features(net, images, norm, groups, settings.block,
                              settings.context, rng=rng, device=device,
                              deadline=started + FEATURE_SHARE * (end - started), clock=clock)
    sample = yield from _relay_features(job, started, clock)
    yield FitProgress("head", 0, settings.steps, clock() - started,
                      f"training the head on {len(sample.labels)} pixels")
    fitted = clock()
    # the head keeps its share of the budget even when the last feature window ran late
    deadline = max(end, fitted + (1 - FEATURE_SHARE) * budget) if budget else math.inf
    layers, mean, std, info = train_head(sample, model.metadata.classes, settings,
                                         deadline=deadline, clock=clock)
    net.cpu().set_head(layers, mean, std)
    model.metadata.training = _provenance(settings, counts, sample, info, clock() - fitted,
                                          clock() - started)
    yield FitProgress("head", info["steps"], settings.steps, clock() - started,
                      f"head trained: accuracy on the painted pixels {info['train_accuracy']:.3f}")
    return model.eval()


def _relay_features(job: Generator[FeatureProgress, None, PixelSample], started: float,
                    clock: Callable[[], float]) -> Generator[FitProgress, None, PixelSample]:
    while True:
        try:
            e = next(job)
        except StopIteration as stop:
            return stop.value
        yield FitProgress("features", e.done, e.total, clock() - started,
                          f"features of {e.pixels} painted pixels")


def _provenance(settings: FeatureHeadSettings, counts: np.ndarray, sample: PixelSample,
                info: dict[str, Any], fit_s: float, total_s: float) -> dict[str, Any]:
    return {"kind": "feature-head", "settings": {k: list(v) if isinstance(v, tuple) else v
                                                 for k, v in asdict(settings).items()},
            "annotated_pixels": [int(c) for c in counts[1:]],
            "sampled_pixels": len(sample.labels), "windows": sample.windows,
            "windows_total": sample.windows_total, "features_s": round(sample.seconds, 3),
            "fit_s": round(fit_s, 3), "time_s": round(total_s, 3), **info}
