"""Models trained in a viewer, shared between the Train and Segment widgets of that viewer."""

from __future__ import annotations

import weakref
from typing import Any

from psygnal import Signal


class TrainedModels:
    """An ordered ``name -> model`` store; ``changed`` fires when a model is added or replaced."""

    changed = Signal(str)

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}

    def add(self, name: str, model: Any) -> str:
        self._models[name] = model
        self.changed.emit(name)
        return name

    def get(self, name: str) -> Any:
        return self._models[name]

    def names(self) -> list[str]:
        return list(self._models)

    def __contains__(self, name: str) -> bool:
        return name in self._models


_REGISTRIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def trained_models(viewer: Any) -> TrainedModels:
    """The store of models trained in ``viewer`` (created on first use, dropped with the viewer)."""
    reg = _REGISTRIES.get(viewer)
    if reg is None:
        reg = _REGISTRIES[viewer] = TrainedModels()
    return reg
