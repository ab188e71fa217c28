from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pld_ros.learning.checkpoint import load_checkpoint, save_checkpoint


def parts(
    value: float,
) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer], dict[str, torch.Tensor]]:
    module = nn.Linear(2, 1)
    with torch.no_grad():
        module.weight.fill_(value)
    optimizer = torch.optim.AdamW(module.parameters())
    return {"net": module}, {"net": optimizer}, {"t": torch.tensor(value)}


def test_a_kill_between_the_renames_falls_back_to_the_previous_checkpoint(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoint"
    save_checkpoint(directory, *parts(1.0), {"updates": 1})
    # The instant between moving the old checkpoint aside and putting the new one in place.
    directory.rename(tmp_path / "checkpoint.old")
    modules, optimizers, tensors = parts(0.0)
    assert load_checkpoint(directory, modules, optimizers, tensors) == {"updates": 1}
    assert float(modules["net"].state_dict()["weight"][0, 0]) == 1.0 and float(tensors["t"]) == 1.0


def test_no_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none", *parts(0.0))
