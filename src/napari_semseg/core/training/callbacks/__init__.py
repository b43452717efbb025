"""Callbacks: what happens around the training steps (see :mod:`.base` for the interface)."""

from .base import Callback
from .checkpointing import Checkpoint
from .divergence import DivergenceGuard
from .feed import AnnotationFeed, TakesAnnotations, UseNewAnnotations
from .first_answer import FirstAnswer
from .preview import Preview
from .provenance import Provenance, training_record
from .threads import ThreadTuning
from .validation import EarlyStopping, Validation

__all__ = ["AnnotationFeed", "Callback", "Checkpoint", "DivergenceGuard", "EarlyStopping", "FirstAnswer", "Preview",
           "Provenance", "TakesAnnotations", "ThreadTuning", "UseNewAnnotations", "Validation",
           "training_record"]
