"""The training engine: one :class:`~.engine.Trainer` loop; tasks and callbacks plug in.

Modules: :mod:`.engine` (the loop), :mod:`.state` (loop state, budget, progress events),
:mod:`.task` (the task protocol), :mod:`.callbacks` (what happens around the steps),
:mod:`.checkpoint` (checkpoint files), :mod:`.data` (segmentation inputs and patches),
:mod:`.tasks` (one module per kind of training). The public entry points of segmentation
training are :func:`napari_semseg.core.train.train` and
:func:`napari_semseg.core.train.iter_train`.
"""
