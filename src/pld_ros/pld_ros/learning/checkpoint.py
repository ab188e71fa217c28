"""A learner's checkpoint in a directory, without pickle: safetensors for tensors, JSON for the rest.

Layout: ``<name>.safetensors`` per module (its state dict), ``<name>.optimizer.safetensors`` per
optimizer (its per-parameter state, keyed ``<param index>.<key>``), ``tensors.safetensors`` for
loose tensors (e.g. a log temperature), and ``checkpoint.json`` with the optimizers' parameter groups
and the caller's scalars.

A checkpoint is written into a sibling temporary directory and then put in place by renames, so a
process killed while writing leaves the previous checkpoint (or, in the instant between the two
renames, ``<directory>.old``) and never a mix of two.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

SCALARS_FILE = "checkpoint.json"
TENSORS_FILE = "tensors.safetensors"


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {key!r} is not a tensor: {type(value).__name__}")
            tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
    return tensors, state["param_groups"]


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], groups: list[Any]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(
    directory: Path,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    tensors: Mapping[str, torch.Tensor],
    scalars: Mapping[str, Any],
) -> None:
    """Write a checkpoint to ``directory`` (replacing the one there; see the module docstring)."""
    staging = directory.with_name(directory.name + ".tmp")
    previous = directory.with_name(directory.name + ".old")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, module in modules.items():
        state = {key: value.detach().contiguous().cpu() for key, value in module.state_dict().items()}
        save_file(state, str(staging / f"{name}.safetensors"))
    groups = {}
    for name, optimizer in optimizers.items():
        optimizer_tensors, groups[name] = _optimizer_parts(optimizer)
        save_file(optimizer_tensors, str(staging / f"{name}.optimizer.safetensors"))
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(staging / TENSORS_FILE))
    (staging / SCALARS_FILE).write_text(json.dumps({"scalars": scalars, "param_groups": groups}, indent=1))
    shutil.rmtree(previous, ignore_errors=True)
    if directory.exists():
        directory.rename(previous)
    staging.rename(directory)
    shutil.rmtree(previous, ignore_errors=True)


def _existing(directory: Path) -> Path:
    """``directory``, or the previous checkpoint when a kill fell between the two renames."""
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if (candidate / SCALARS_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"no checkpoint in {directory}")


def read_scalars(directory: Path) -> dict[str, Any]:
    """The scalars of the checkpoint in ``directory``; FileNotFoundError without one."""
    directory = _existing(directory)
    scalars: dict[str, Any] = json.loads((directory / SCALARS_FILE).read_text())["scalars"]
    return scalars


def load_checkpoint(
    directory: Path,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    tensors: Mapping[str, torch.Tensor],
) -> dict[str, Any]:
    """Load a checkpoint into ``modules``, ``optimizers`` and ``tensors`` (copied in place, names
    and shapes must match); returns its scalars. FileNotFoundError without one."""
    directory = _existing(directory)
    scalars = read_scalars(directory)
    saved = json.loads((directory / SCALARS_FILE).read_text())
    for name, module in modules.items():
        module.load_state_dict(load_file(str(directory / f"{name}.safetensors")))
    for name, optimizer in optimizers.items():
        loaded = load_file(str(directory / f"{name}.optimizer.safetensors"))
        _restore_optimizer(optimizer, loaded, saved["param_groups"][name])
    loose = load_file(str(directory / TENSORS_FILE))
    if set(loose) != set(tensors):
        raise ValueError(f"checkpoint tensors {sorted(loose)} differ from the expected {sorted(tensors)}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            tensor.copy_(loose[name])
    return scalars
