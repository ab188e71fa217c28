"""``pld train sim-classifier``: the success classifier from rollout episode files (the path of
scripts/train_sim_models.sh), through the reward-classifier training; errors say ``pld train``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from typer.testing import CliRunner

from pld_ros.core.observation import ACTION_DIM, PROPRIO_DIM
from pld_ros.training.commands import app
from pld_ros.training.rollouts import Episode, save_episode
from tests.pld_ros.training.synthetic_frames import episode


def rollout(index: int, view_names: tuple[str, str] = ("wrist", "side")) -> Episode:
    """A rollout file's episode with the synthetic frames and labels of ``episode(index)``."""
    frames = episode(index)
    steps = len(frames)
    return Episode(
        views=frames.views,
        proprio=np.zeros((steps, PROPRIO_DIM), dtype=np.float32),
        actions=np.zeros((steps, ACTION_DIM), dtype=np.float32),
        success=frames.labels[:, 0] == 1,
        view_names=view_names,
        seed=index,
        succeeded=True,
    )


def test_sim_classifier_trains_on_rollout_files_and_writes_the_threshold(tmp_path: Path) -> None:
    for index in range(8):
        save_episode(rollout(index), tmp_path / "demos" / f"episode_{index:06d}.npz")
    out = tmp_path / "reward.onnx"
    args = ["sim-classifier", "--demos", str(tmp_path / "demos"), "--out", str(out), "--epochs", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "lift test (held out), all frames at" in result.stdout
    props = (
        ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    )
    assert props["heads"] == '["lift"]' and "demos-episode_000000" in props["training"]


def test_sim_classifier_refuses_views_in_another_order(tmp_path: Path) -> None:
    save_episode(rollout(0, ("side", "wrist")), tmp_path / "episode_000000.npz")
    result = CliRunner().invoke(
        app, ["sim-classifier", "--demos", str(tmp_path), "--out", str(tmp_path / "x.onnx")]
    )
    assert result.exit_code == 2
    assert (
        "episode_000000.npz: views ('side', 'wrist'), the classifier takes ('wrist', 'side')" in result.stderr
    )


def test_a_profile_without_the_simulated_world_is_a_pld_train_error(tmp_path: Path) -> None:
    args = ["collect-demos", "--episodes", "1", "--out", str(tmp_path), "--profile", "yam_gpu_insertion"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr == (
        "pld train: yam_gpu_insertion: the simulated variant does not host the franka_pick_cube world\n"
    )
