"""FeatureHeadNet: frozen pretrained MobileNetV2 features at a few image scales + a 1x1 head.

The network maps a normalized image tile ``(B, C, H, W)`` to class logits ``(B, K, H, W)`` like
any segmentation model, so the tiled prediction engine runs it unchanged. Inside:

1. the input becomes a 3-channel ImageNet-normalized image (grey copied to RGB; other channel
   counts averaged to grey);
2. for each image scale ``s`` (the input average-pooled by ``s``: 1, 2, 4), the first blocks
   of MobileNetV2 (ImageNet weights, frozen, batch norms folded into the convolutions) give
   feature maps ("taps": the stem and blocks 1, 3, 6, at strides 2, 2, 4, 8 of that scale);
3. a light head classifies every pixel from the concatenation of all those maps (upsampled to
   full resolution) and the normalized input itself: a 2-layer MLP (``hidden`` units, ReLU) as
   1x1 convolutions, or a linear classifier when ``hidden`` is 0.

The head's first layer is linear, so it is applied to each low-resolution map *before*
upsampling (``W @ up(f) == up(W @ f)``), and the projected maps are summed coarse to fine with a
single full-resolution upsampling (:mod:`.upsample`): no full-resolution tensor with more than
``hidden`` channels ever exists. The same linearity lets training read features only at the
painted pixels (:meth:`FeatureHeadNet.pixel_features`, exactly the operator of the forward
pass): the MLP trained on those vectors is the head of the tiled forward pass.

Receptive field: 236 pixels at scale 4 (4 + 58 x 4; block 6 sees 59 pixels of its input), plus
the upsampling's reach; most of the weight is central, and the model's halo of 96 pixels
(overlap 192) keeps tiled labels within 0.02 % of a whole-image pass (see
:data:`napari_semseg.core.first_answer.fit.HALO`). Height and width must be multiples of 32.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .filters import filter_bank, filter_channels
from .upsample import cascade_sum, sample_cascade

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# MobileNetV2 ``features`` block index -> (output channels, stride)
TAPS = {0: (32, 2), 1: (16, 2), 3: (24, 4), 6: (32, 8), 10: (64, 16), 13: (96, 16)}
DEFAULT_SCALES = (1, 2, 4)
DEFAULT_TAPS = (0, 1, 3, 6)
DEFAULT_HIDDEN = 32


# MobileNetV2 inverted residual settings (expansion, channels, repeats, first stride), as in
# torchvision; block 0 is the stem (3x3 convolution, 32 channels, stride 2).
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))


def _conv_bn(inp: int, oup: int, kernel: int = 1, stride: int = 1, groups: int = 1,
             act: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(oup)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class InvertedResidual(nn.Module):
    """MobileNetV2 block (torchvision's layout and parameter names)."""

    def __init__(self, inp: int, oup: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(nn.Sequential(*_conv_bn(inp, hidden)))
        layers.append(nn.Sequential(*_conv_bn(hidden, hidden, 3, stride, groups=hidden)))
        layers += _conv_bn(hidden, oup, act=False)
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and inp == oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def mobilenet_v2_blocks(last: int) -> nn.Sequential:
    """Blocks 0..``last`` of MobileNetV2's ``features`` (random weights; no torchvision import).

    Parameter names are those of torchvision's and smp's ``mobilenet_v2`` (``N.*`` here,
    ``features.N.*`` there), so ImageNet weights load directly.
    """
    blocks: list[nn.Module] = [nn.Sequential(*_conv_bn(3, 32, 3, 2))]
    inp = 32
    for expand, channels, repeats, stride in MOBILENET_V2:
        for r in range(repeats):
            blocks.append(InvertedResidual(inp, channels, stride if r == 0 else 1, expand))
            inp = channels
    return nn.Sequential(*blocks[:last + 1])


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def fold_batch_norms(module: ModuleT) -> ModuleT:
    """Fold every ``Conv2d`` followed by a ``BatchNorm2d`` (eval statistics) into one ``Conv2d``
    with a bias, in place; the batch norm becomes ``Identity`` (same output, 20 % faster)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for parent in module.modules():
        names = list(parent._modules)
        for a, b in itertools.pairwise(names):
            conv, bn = parent._modules[a], parent._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                parent._modules[a] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                parent._modules[b] = nn.Identity()
    return module


def taps_per_scale(scales: Sequence[int], taps: Sequence[Any]) -> list[list[int]]:
    """``taps`` as one sorted list per scale: a flat list applies to every scale."""
    if taps and all(isinstance(t, (list, tuple)) for t in taps):
        if len(taps) != len(scales):
            raise ValueError(f"{len(taps)} tap lists for {len(scales)} scales")
        return [sorted(int(t) for t in ts) for ts in taps]
    return [sorted(int(t) for t in taps) for _ in scales]


def feature_head_stride(scales: Sequence[int] = DEFAULT_SCALES,
                        taps: Sequence[Any] = DEFAULT_TAPS, **_: Any) -> int:
    """Size multiple the input needs: the coarsest feature map's stride, at least 32."""
    per = taps_per_scale(scales, taps)
    return max([32] + [s * TAPS[t][1] for s, ts in zip(scales, per, strict=False) for t in ts if t in TAPS])


class FeatureHeadNet(nn.Module):
    """Frozen MobileNetV2 features at image scales ``scales`` plus a trainable per-pixel head.

    Parameters
    ----------
    in_channels, classes
        Input channels of the (normalized) image and number of classes.
    scales
        Image scales (average-pooling factors) at which the encoder runs.
    taps
        MobileNetV2 block indices whose outputs are features (keys of :data:`TAPS`): one list
        for every scale, or one list per scale.
    hidden
        Hidden units of the MLP head; 0 makes the head a linear classifier.
    raw
        Also feed the normalized input pixels to the head.
    filters
        Scales (Gaussian sigmas) of classic filter responses also fed to the head (see
        :mod:`.filters`); empty for none.
    """

    rgb_mean: torch.Tensor  # buffers, registered in __init__
    rgb_std: torch.Tensor

    def __init__(self, in_channels: int, classes: int, *, scales: Sequence[int] = DEFAULT_SCALES,
                 taps: Sequence[Any] = DEFAULT_TAPS, hidden: int = DEFAULT_HIDDEN,
                 raw: bool = True, filters: Sequence[float] = ()) -> None:
        super().__init__()
        per = taps_per_scale(scales, taps)
        unknown = sorted({t for ts in per for t in ts} - set(TAPS))
        if unknown or not all(per) or not scales or min(scales) < 1:
            raise ValueError(f"taps must be among {sorted(TAPS)} and scales positive; got taps "
                             f"{list(taps)}, scales {list(scales)}")
        self.in_channels, self.classes = int(in_channels), int(classes)
        self.scales, self.taps = [int(s) for s in scales], per
        self.hidden, self.raw = int(hidden), bool(raw)
        self.filters = [float(f) for f in filters]
        if any(not f > 0 for f in self.filters):
            raise ValueError(f"filter scales must be positive; got {list(filters)}")
        self.encoder = fold_batch_norms(mobilenet_v2_blocks(max(max(ts) for ts in per)))
        self.encoder.requires_grad_(False)
        width = self.hidden or self.classes
        self.project = nn.ModuleList(
            nn.Conv2d(TAPS[t][0], width, 1, bias=False) for ts in per for t in ts)
        self.project_raw = nn.Conv2d(self.in_channels, width, 1, bias=True)
        self.project_filters = (nn.Conv2d(self.n_filters, width, 1, bias=False)
                                if self.filters else None)
        if not self.raw:
            self.project_raw.weight.data.zero_()
            self.project_raw.weight.requires_grad_(False)
        self.classify = nn.Conv2d(self.hidden, self.classes, 1) if self.hidden else nn.Identity()
        self.register_buffer("rgb_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("rgb_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)

    # ------------------------------------------------------------------ features

    @property
    def feature_channels(self) -> list[int]:
        """Channels of each low-resolution map of :meth:`pyramid`, in order."""
        return [TAPS[t][0] for ts in self.taps for t in ts]

    @property
    def stride(self) -> int:
        """Input height and width must be multiples of this (see :func:`feature_head_stride`)."""
        return feature_head_stride(self.scales, self.taps)

    @property
    def n_filters(self) -> int:
        """Number of classic filter maps fed to the head (0 without ``filters``)."""
        return filter_channels(self.in_channels, self.filters) if self.filters else 0

    @property
    def n_features(self) -> int:
        """Length of a per-pixel feature vector (:meth:`pixel_features`): pretrained maps,
        filter maps, raw pixels."""
        return (sum(self.feature_channels) + self.n_filters
                + (self.in_channels if self.raw else 0))

    def _rgb(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            x = x.mean(1, keepdim=True).expand(-1, 3, -1, -1)
        return (x - self.rgb_mean.to(x.dtype)) / self.rgb_std.to(x.dtype)

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Low-resolution feature maps of a normalized image: per scale, per tap."""
        rgb = self._rgb(x)
        maps = []
        for s, taps in zip(self.scales, self.taps, strict=False):
            h = F.avg_pool2d(rgb, s) if s > 1 else rgb
            for i, block in enumerate(self.encoder[:taps[-1] + 1]):
                h = block(h)
                if i in taps:
                    maps.append(h)
        return maps

    def pixel_features(self, x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """Feature vectors ``(N, n_features)`` of pixels ``(ys, xs)`` of a ``(1, C, H, W)`` image.

        Each map is weighted exactly as :meth:`forward` upsamples it (see
        :mod:`.upsample`), so a head trained on these vectors gives :meth:`forward`'s logits
        at those pixels.
        """
        parts = sample_cascade(self.pyramid(x), x.shape[-2:], ys, xs)
        if self.filters:
            parts.append(filter_bank(x, self.filters)[0, :, ys, xs].T)
        if self.raw:
            parts.append(x[0, :, ys, xs].T)
        return torch.cat(parts, 1)

    # ------------------------------------------------------------------ head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        by_size: dict[tuple[int, ...], torch.Tensor] = {}  # maps of equal stride are summed
        for proj, m in zip(self.project, self.pyramid(x), strict=False):
            p = proj(m).contiguous()
            key = tuple(p.shape[-2:])
            by_size[key] = by_size[key] + p if key in by_size else p
        out = cascade_sum([by_size[k] for k in sorted(by_size)], x.shape[-2:])
        out = out + self.project_raw(x.contiguous())
        if self.project_filters is not None:
            out = out + self.project_filters(filter_bank(x, self.filters).contiguous())
        if self.hidden:
            out = self.classify(F.relu(out))
        return out

    def set_head(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 mean: torch.Tensor, std: torch.Tensor) -> None:
        """Copy a head trained on standardized :meth:`pixel_features` into the convolutions.

        ``layers`` are ``(weight, bias)`` of the MLP's linear layers (one for a linear head);
        ``mean`` and ``std`` the standardization of the feature vectors, folded into the
        first layer (``W (f - mean) / std + b``).
        """
        w1, b1 = layers[0]
        w1 = w1 / std
        b1 = b1 - w1 @ mean
        raw = self.in_channels if self.raw else 0
        splits = torch.split(w1, self.feature_channels + [self.n_filters, raw], dim=1)
        with torch.no_grad():
            for conv, part in zip(self.project, splits[:-2], strict=False):
                assert isinstance(conv, nn.Conv2d)  # self.project holds 1x1 convolutions
                conv.weight.copy_(part[:, :, None, None])
            if self.project_filters is not None:
                self.project_filters.weight.copy_(splits[-2][:, :, None, None])
            if self.raw:  # without raw pixels the weights stay zero: only the bias acts
                self.project_raw.weight.copy_(splits[-1][:, :, None, None])
            assert self.project_raw.bias is not None  # made with bias=True
            self.project_raw.bias.copy_(b1)
            if self.hidden:
                # a Conv2d with bias when hidden > 0
                assert isinstance(self.classify, nn.Conv2d) and self.classify.bias is not None
                w2, b2 = layers[1]
                self.classify.weight.copy_(w2[:, :, None, None])
                self.classify.bias.copy_(b2)

    def load_encoder_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load MobileNetV2 weights (torchvision/smp keys ``features.N.*``; others are ignored)
        and fold their batch norms into the convolutions."""
        prefix = "features."
        n = len(self.encoder)
        mine = {k[len(prefix):]: v for k, v in state.items()
                if k.startswith(prefix) and int(k[len(prefix):].split(".")[0]) < n}
        blocks = mobilenet_v2_blocks(n - 1)
        blocks.load_state_dict(mine, strict=True)
        self.encoder.load_state_dict(fold_batch_norms(blocks).state_dict(), strict=True)
