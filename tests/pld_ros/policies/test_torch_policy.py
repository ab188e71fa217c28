"""The TorchScript backend on a small scripted module built here (no real VLA fits in a test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pld_ros.core.observation import Observation
from pld_ros.policies.base_policy import make_base_policy
from pld_ros.policies.torch_policy import TorchPolicy
from pld_ros.profile import BasePolicy as BasePolicyConfig

VIEWS = ("wrist", "side")


class Tiny(torch.nn.Module):
    """actions[b, i] = proprio[b, :7] + (i + 1) * 0.1 + mean(images[b]) / 255."""

    def __init__(self, horizon: int, views: int) -> None:
        super().__init__()
        self.horizon = horizon
        self.views = views

    def forward(self, images: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != self.views:
            raise RuntimeError("wrong number of views")
        brightness = images.float().mean(dim=(1, 2, 3, 4)) / 255.0
        ramp = 0.1 * torch.arange(1, self.horizon + 1, dtype=torch.float32)
        return proprio[:, None, :7] + ramp[None, :, None] + brightness[:, None, None]


def save(path: Path, horizon: int = 4, views: int = 2) -> Path:
    torch.jit.save(torch.jit.script(Tiny(horizon, views)), str(path))
    return path


def observation(brightness: int = 51) -> Observation:
    view = np.full((8, 8, 3), brightness, dtype=np.uint8)
    return Observation(
        views={"wrist": view, "side": view}, proprio=np.arange(8, dtype=np.float32), prompt="p", stamp=0.0
    )


def test_the_module_predicts_a_chunk_from_the_stacked_views_and_the_proprioception(tmp_path: Path) -> None:
    config = BasePolicyConfig(
        backend="torch", path=save(tmp_path / "tiny.pt"), prompt="p", views=VIEWS, chunk_horizon=3
    )
    policy = make_base_policy(config)
    actions = policy.infer(observation())
    expected = np.arange(7)[None, :] + 0.1 * np.arange(1, 4)[:, None] + 0.2  # cut to chunk_horizon 3
    np.testing.assert_allclose(actions, expected, rtol=1e-6)
    assert policy.name == "torch:tiny.pt" and policy.connected


def test_a_module_that_refuses_the_inputs_fails_naming_the_shapes_it_was_given(tmp_path: Path) -> None:
    policy = TorchPolicy(save(tmp_path / "three.pt", views=3), VIEWS, device="cpu")
    with pytest.raises(ValueError, match=r"images \[1, 2, 8, 8, 3\] uint8 and proprio \[1, 8\]"):
        policy.infer(observation())


def test_a_missing_or_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TorchPolicy(tmp_path / "absent.pt", VIEWS)
    (tmp_path / "junk.pt").write_bytes(b"not a module")
    with pytest.raises(ValueError, match="not a TorchScript module"):
        TorchPolicy(tmp_path / "junk.pt", VIEWS)
