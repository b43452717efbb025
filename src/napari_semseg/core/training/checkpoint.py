"""Checkpoint files: the exported model plus a ``.state`` file to resume from, both atomic.

A checkpoint at ``path`` is the model file the task writes (:meth:`Task.save`) and, next to
it, ``path.state``: a safetensors file with the tensors ``opt/<optimizer>/<param>/<key>``
(optimizer state), ``module/<name>/<key>`` (trained modules that are not exported) and
``best/<key>`` (the best weights so far), and in its metadata (key ``state``) one JSON
document: ``param_groups`` by optimizer, the loop's record (epoch, step, elapsed, best,
history, ...) and the task's state. Both files are written to a temporary name and renamed,
so a crash leaves the previous complete checkpoint. Nothing is ever unpickled.

Older ``.state`` files (one optimizer: ``opt/<param>/<key>`` and a list of param groups) are
read too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import SemSegError
from .state import LoopState
from .task import Task

SavedState = tuple[dict[str, Any], dict[str, torch.Tensor]]


def state_path(checkpoint: Path) -> Path:
    """The ``.state`` file next to a checkpoint's model file."""
    return checkpoint.with_name(checkpoint.name + ".state")


def save_tensors_atomic(tensors: Mapping[str, torch.Tensor], path: Path,
                        metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file under a temporary name, then rename it onto ``path``."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata=metadata)
    os.replace(tmp, path)


def _optimizer_tensors(optimizers: Mapping[str, torch.optim.Optimizer]
                       ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    groups: dict[str, Any] = {}
    for name, optimizer in optimizers.items():
        sd = optimizer.state_dict()
        groups[name] = sd["param_groups"]
        for pid, st in sd["state"].items():
            for key, val in st.items():
                tensors[f"opt/{name}/{pid}/{key}"] = val if torch.is_tensor(val) \
                    else torch.tensor(val)
    return tensors, groups


LIVE = "__model__"  # the task's live model inside the .state file


def write_checkpoint(path: Path, task: Task, loop: LoopState) -> None:
    """Write the ``.state`` file (optimizers, modules, the live model's weights, counters),
    then the task's live model (:meth:`Task.save`) beside it.

    Each file is replaced atomically; the state is written first and holds the live weights
    too, so a run killed between the two files resumes from the state alone, consistently
    (not from a newer model with an older schedule).
    """
    tensors, groups = _optimizer_tensors(task.optimizers())
    modules = {**task.modules(), LIVE: task.model()}
    for name, module in modules.items():
        tensors.update({f"module/{name}/{k}": v.detach().cpu().clone()
                        for k, v in module.state_dict().items()})
    if loop.best_weights is not None:
        tensors.update({f"best/{k}": v for k, v in loop.best_weights.items()})
    meta = {"param_groups": groups, **loop.record(), **task.state()}
    save_tensors_atomic(tensors, state_path(path), {"state": json.dumps(meta)})
    task.save(task.model(), path)


def read_checkpoint_state(path: Path) -> SavedState | None:
    """The saved state and tensors of a checkpoint's ``.state`` file, or None if absent."""
    from safetensors import safe_open

    sp = state_path(Path(path))
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


def _saved_optimizer_states(names: list[str], meta: dict[str, Any],
                            tensors: Mapping[str, torch.Tensor]
                            ) -> tuple[dict[str, Any], dict[str, dict[int, dict[str, Any]]]]:
    groups = meta.get("param_groups", {})
    if not names:
        return {}, {}
    legacy = isinstance(groups, list)  # one optimizer, keys opt/<param>/<key>
    if legacy:
        groups = {names[0]: groups} if len(names) == 1 else {}
    states: dict[str, dict[int, dict[str, Any]]] = {}
    for key, val in tensors.items():
        if not key.startswith("opt/"):
            continue
        if legacy:
            name, (pid, item) = names[0], key[4:].split("/", 1)
        else:
            name, pid, item = key[4:].split("/", 2)
        states.setdefault(name, {}).setdefault(int(pid), {})[item] = val
    return groups, states


def restore_optimizers(optimizers: Mapping[str, torch.optim.Optimizer], meta: dict[str, Any],
                       tensors: Mapping[str, torch.Tensor]) -> None:
    """Load the saved optimizer states; an optimizer whose layout changed (e.g. classes were
    added) starts with a fresh state."""
    groups, states = _saved_optimizer_states(list(optimizers), meta, tensors)
    for name, optimizer in optimizers.items():
        if name not in groups:
            continue
        try:
            optimizer.load_state_dict({"state": states.get(name, {}),
                                       "param_groups": groups[name]})
        except (ValueError, KeyError):
            pass  # a different layout: start this optimizer's state fresh


def restore_modules(modules: Mapping[str, torch.nn.Module],
                    tensors: Mapping[str, torch.Tensor]) -> None:
    """Load the saved weights of the task's non-exported modules."""
    for name, module in modules.items():
        prefix = f"module/{name}/"
        weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if weights:
            module.load_state_dict(weights)
