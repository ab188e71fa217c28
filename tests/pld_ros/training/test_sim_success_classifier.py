"""Training the simulation success classifier on privileged labels, its held-out scores and export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pld_ros.core.observation import ACTION_DIM, PROPRIO_DIM
from pld_ros.models.resnet10 import ResNet10Config
from pld_ros.models.success_classifier import SuccessClassifierConfig
from pld_ros.training.rollouts import Episode, save_episode
from pld_ros.training.sim_success_classifier import (
    ClassifierTrainingConfig,
    scores,
    train_success_classifier,
)

TINY = ClassifierTrainingConfig(
    model=SuccessClassifierConfig(
        encoder=ResNet10Config(widths=(4, 4, 8, 8), embedding_dim=8), hidden_dim=16, num_layers=1
    ),
    epochs=12,
    batch_size=8,
    learning_rate=3e-3,
    val_fraction=0.25,
    threads=1,
)


def episode(seed: int, steps: int = 12) -> Episode:
    """Success frames are bright, the others dark: what a lifted cube is to the real classifier."""
    success = np.arange(steps) >= steps // 2
    rng = np.random.default_rng(seed)
    level = np.where(success, 200, 40) + rng.integers(-20, 20, steps)
    views = np.broadcast_to(level.astype(np.uint8)[:, None, None, None, None], (steps, 2, 16, 16, 3))
    return Episode(
        views=np.ascontiguousarray(views),
        proprio=np.zeros((steps, PROPRIO_DIM), dtype=np.float32),
        actions=np.zeros((steps, ACTION_DIM), dtype=np.float32),
        success=success,
        view_names=("wrist", "side"),
        seed=seed,
        succeeded=True,
    )


def test_training_separates_success_frames_on_held_out_episodes(tmp_path: Path) -> None:
    for seed in range(8):
        save_episode(episode(seed), tmp_path / "demos" / f"episode_{seed:06d}.npz")
    out = tmp_path / "reward.onnx"
    report = train_success_classifier([tmp_path / "demos"], out, TINY, log=lambda _: None)
    assert report.val_episodes == 2 and report.val_positives == 12
    at_half = report.scores[0]
    assert at_half.threshold == 0.5 and at_half.precision >= 0.9 and at_half.recall >= 0.9
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    frames = np.stack([episode(99).views[0], episode(99).views[-1]])
    (probabilities,) = session.run(["probabilities"], {"images": frames})
    assert probabilities.shape == (2, 1) and probabilities[0, 0] < 0.5 < probabilities[1, 0]


def test_views_of_the_wrong_order_are_refused(tmp_path: Path) -> None:
    swapped = episode(0)
    save_episode(
        Episode(**{**swapped.__dict__, "view_names": ("side", "wrist")}), tmp_path / "episode_000000.npz"
    )
    with pytest.raises(ValueError, match="views"):
        train_success_classifier([tmp_path], tmp_path / "x.onnx", TINY, log=lambda _: None)


def test_scores() -> None:
    labels = np.array([True, True, False, False])
    result = scores(np.array([0.9, 0.2, 0.8, 0.1], dtype=np.float32), labels, 0.5)
    assert (result.precision, result.recall, result.accuracy) == (0.5, 0.5, 0.5)
    nothing_called = scores(np.zeros(4, dtype=np.float32), labels, 0.5)
    assert nothing_called.precision == 1.0 and nothing_called.recall == 0.0


SHIPPED = Path(__file__).resolve().parents[3] / "config" / "models" / "franka_pick_cube_reward.onnx"


def test_shipped_classifier_keeps_the_reward_contract() -> None:
    assert SHIPPED.is_file(), f"{SHIPPED} is missing: run scripts/train_sim_models.sh"
    assert SHIPPED.stat().st_size < 10e6
    session = ort.InferenceSession(str(SHIPPED), providers=["CPUExecutionProvider"])
    (images,) = session.get_inputs()
    assert (images.name, images.type, images.shape[1:]) == ("images", "tensor(uint8)", [2, 128, 128, 3])
    (output,) = session.get_outputs()
    assert output.name == "probabilities"
    (probabilities,) = session.run(["probabilities"], {"images": np.zeros((3, 2, 128, 128, 3), np.uint8)})
    assert probabilities.shape == (3, 1) and ((probabilities >= 0) & (probabilities <= 1)).all()
