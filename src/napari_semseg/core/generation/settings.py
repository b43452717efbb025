"""Typed settings of generator training and synthesis, shared by the API, CLI and widget.

``train_generator(..., crop_size=128)``, ``napari-semseg train-generator --crop-size 128`` and
the Synthesize widget's field ``crop_size`` are one option, :attr:`GeneratorSettings.crop_size`;
the field metadata ``help`` is the CLI help and the widget tooltip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import SemSegError


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class GeneratorSettings:
    """Settings of generator training (:func:`napari_semseg.train_generator`)."""

    base_channels: int = _opt(16, "width of the generator's first level (doubles per level; "
                                  "16 is slim and CPU-friendly)")
    discriminator_channels: int = _opt(8, "width of the discriminator's first level (its "
                                          "cost dominates a step; 8 is half the generator's)")
    depth: int = _opt(4, "levels of the U-Nets (stride 2^(depth-1))")
    noise_fine: int = _opt(2, "per-pixel noise channels (texture)")
    noise_smooth: int = _opt(2, "smooth noise channels (slow variations over noise_cell pixels)")
    noise_cell: int = _opt(32, "spacing in pixels of the smooth noise lattice")
    crop_size: int = _opt(128, "training crop edge in pixels (multiple of the stride)")
    batch_size: int = _opt(4, "crops per step")
    steps: int | None = _opt(None, "optimizer steps (default: until time_budget, else 2000)")
    time_budget: float | None = _opt(None, "wall-clock budget in seconds")
    steps_per_epoch: int = _opt(50, "steps between progress summaries and checkpoints")
    learning_rate: float = _opt(5e-4, "generator learning rate (Adam, beta1 0); the "
                                      "discriminator uses twice this")
    reconstruction: float = _opt(10.0, "weight of the low-pass L1 term (colours of the "
                                       "classes; 0 = purely adversarial)")
    reconstruction_pool: int = _opt(8, "cell size in pixels of the low-pass L1 term")
    label_dropout: float = _opt(0.5, "share of crops whose generator input gets an "
                                     "unconstrained (0) box, for sparse label maps")
    augment: bool = _opt(True, "flips and 90-degree rotations of the training crops")
    device: str = _opt("auto", "'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda', 'mps'")
    amp: bool = _opt(False, "mixed precision while training (bf16/fp16)")
    threads: int | None = _opt(None, "CPU threads (default: torch's)")
    seed: int = _opt(0, "random seed (CPU runs with --steps are deterministic for a seed)")
    checkpoint: str | None = _opt(None, "generator file written atomically after every epoch")
    resume: bool = _opt(False, "continue from the checkpoint if it exists")

    def validated(self) -> GeneratorSettings:
        """Return self after checking value ranges; raise :class:`SemSegError` otherwise."""
        stride = 2 ** (self.depth - 1)
        self._require(2 <= self.depth <= 6, f"--depth must be 2 to 6, got {self.depth}")
        self._require(min(self.base_channels, self.discriminator_channels) >= 4,
                      f"--base-channels and --discriminator-channels must be at least 4, got "
                      f"{self.base_channels}, {self.discriminator_channels}")
        self._require(self.crop_size >= 2 * stride and self.crop_size % stride == 0,
                      f"--crop-size must be a multiple of the stride {stride} and at least "
                      f"{2 * stride}, got {self.crop_size}")
        self._require(self.batch_size >= 1, f"--batch-size must be at least 1, got "
                                            f"{self.batch_size}")
        self._require(self.steps is None or self.steps >= 1,
                      f"--steps must be at least 1, got {self.steps}")
        self._require(self.time_budget is None or self.time_budget > 0,
                      f"--time-budget must be positive seconds, got {self.time_budget}")
        self._require(self.steps_per_epoch >= 1,
                      f"--steps-per-epoch must be at least 1, got {self.steps_per_epoch}")
        self._require(self.learning_rate > 0,
                      f"--learning-rate must be positive, got {self.learning_rate}")
        self._require(self.reconstruction >= 0,
                      f"--reconstruction must be 0 or more, got {self.reconstruction}")
        self._require(self.reconstruction_pool >= 1
                      and self.crop_size % self.reconstruction_pool == 0,
                      f"--reconstruction-pool must divide --crop-size {self.crop_size}, got "
                      f"{self.reconstruction_pool}")
        self._require(0 <= self.label_dropout <= 1,
                      f"--label-dropout must be in [0, 1], got {self.label_dropout}")
        self._require(min(self.noise_fine, self.noise_smooth) >= 0 and self.noise_cell >= 1,
                      "--noise-fine and --noise-smooth must be 0 or more and --noise-cell at "
                      "least 1")
        self._require(self.threads is None or self.threads >= 1,
                      f"--threads must be at least 1, got {self.threads}")
        self._require(not self.resume or bool(self.checkpoint),
                      "--resume needs --checkpoint (the file to continue from)")
        return self

    @staticmethod
    def _require(ok: bool, message: str) -> None:
        if not ok:
            raise SemSegError(message)


@dataclass
class SynthesizeSettings:
    """Settings of tiled synthesis (:func:`napari_semseg.synthesize`)."""

    seed: int = _opt(0, "noise seed: the same seed gives the same image, another seed another "
                        "variant")
    tile: int | None = _opt(None, "tile edge in pixels, a multiple of the generator's stride "
                                  "(default: chunk + overlap)")
    overlap: int | None = _opt(None, "overlap between neighbouring tiles in pixels, blended "
                                     "with cosine weights (default: the generator's, 64)")
    chunk: int | None = _opt(None, "edge of the output chunks in pixels (default: the "
                                   "generator's tile, 512)")
    device: str = _opt("auto", "'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda', 'cuda:1', "
                               "'mps'")
    batch_size: int | None = _opt(None, "tiles per forward pass (default: 1 on CPU, 4 on GPU)")
    amp: bool = _opt(False, "mixed precision (bf16/fp16); faster, slightly different pixels")
    overwrite: bool = _opt(False, "replace an existing output")

    def validated(self) -> SynthesizeSettings:
        """Return self after checking value ranges; raise :class:`SemSegError` otherwise."""
        if self.tile is not None and self.tile < 1:
            raise SemSegError(f"--tile must be a positive number of pixels, got {self.tile}")
        if self.overlap is not None and self.overlap < 0:
            raise SemSegError(f"--overlap must be 0 or more pixels, got {self.overlap}")
        if self.chunk is not None and self.chunk < 64:
            raise SemSegError(f"--chunk must be at least 64 pixels, got {self.chunk}")
        if self.batch_size is not None and self.batch_size < 1:
            raise SemSegError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0 <= self.seed < 2**63:
            raise SemSegError(f"--seed must be 0 or a positive integer, got {self.seed}")
        return self
