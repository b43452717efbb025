"""Which pretrained start a new model begins from (``TrainSettings.encoder_weights``).

``"auto"`` picks the bundled start of the encoder (:data:`~napari_semseg.core.settings.
DEFAULT_STARTS`) and random weights for encoders without one; anything else is handed to
:func:`napari_semseg.core.pretrained.resolve_start`, which checks it (name, file, keys, shapes,
network) without loading it. :func:`check_start_setting` runs that check when training is
asked for, before any data is read, so a bad value is one line before any work.
"""

from __future__ import annotations

import os

from ..models import arch_kwargs
from ..pretrained import Start, resolve_start
from ..settings import AUTO_START, DEFAULT_STARTS, TrainSettings


def chosen_start(settings: TrainSettings) -> str | os.PathLike | None:
    """The start the settings ask for, with ``"auto"`` resolved for the settings' encoder."""
    value = settings.encoder_weights
    if isinstance(value, str) and value == AUTO_START:
        return DEFAULT_STARTS.get(settings.encoder)
    return value


def check_start_setting(settings: TrainSettings) -> Start | None:
    """Check the start of a new model (raises a one-line :class:`SemSegError`)."""
    depth = int(arch_kwargs(settings.arch, settings.encoder_depth).get("encoder_depth", 5))
    return resolve_start(chosen_start(settings), settings.encoder, depth)

