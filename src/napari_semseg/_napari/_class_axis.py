"""Name the class slider of a probabilities layer: the layer's name says which class is shown.

napari's sliders count from 0 and know no step names, while label values count from 1. A
probabilities layer stacks one plane per class on an axis labelled "class"; as the slider moves,
its name becomes ``"<image> probabilities: <class name> (class k)"`` with k the label value of
that class, so the plane on screen is never ambiguous.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

INCOMPLETE = " (incomplete)"


def class_step_name(base: str, names: Sequence[str], index: int, incomplete: bool) -> str:
    """The layer name for class plane ``index`` (0-based) of ``names``."""
    k = min(max(int(index), 0), len(names) - 1)
    return f"{base}: {names[k]} (class {k + 1})" + (INCOMPLETE if incomplete else "")


def name_class_steps(viewer: Any, layer: Any, class_axis: int, names: Sequence[str],
                     base: str) -> None:
    """Keep ``layer``'s name in step with the class its slider shows (until it is removed)."""
    names = list(names)
    if not names:
        return

    def update(event: Any = None) -> None:
        if layer not in viewer.layers:
            viewer.dims.events.current_step.disconnect(update)
            return
        point = layer.world_to_data(viewer.dims.point)
        index = int(round(float(point[class_axis])))
        incomplete = layer.name.endswith(INCOMPLETE)
        name = class_step_name(base, names, index, incomplete)
        if layer.name != name:
            layer.name = name

    viewer.dims.events.current_step.connect(update)
    update()
