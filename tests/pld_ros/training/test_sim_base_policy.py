"""The embedded simulation base policy: training lowers the loss, ONNX export matches torch, and
the shipped model keeps the contract of the ONNX base-policy backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from pld_ros.core.observation import ACTION_DIM, PROPRIO_DIM
from pld_ros.models.resnet10 import ResNet10Config
from pld_ros.policies.onnx_policy import OnnxPolicy
from pld_ros.training.rollouts import Episode
from pld_ros.training.sim_base_policy import (
    BasePolicyConfig,
    SimBasePolicy,
    episode_frames,
    evaluate_loss,
    export_onnx,
    fit,
    random_shift,
)

SHIPPED = Path(__file__).resolve().parents[3] / "config" / "models" / "franka_pick_cube_base.onnx"
TINY = BasePolicyConfig(
    encoder=ResNet10Config(widths=(4, 4, 8, 8), embedding_dim=8),
    hidden_dim=32,
    chunk_horizon=2,
    epochs=25,
    batch_size=8,
    learning_rate=3e-3,
    threads=1,
)


def synthetic_episode(steps: int = 16, seed: int = 0) -> Episode:
    """Frames whose brightness encodes the action: learnable from the images alone."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.0, 1.0, steps).astype(np.float32)
    views = np.broadcast_to((level * 255).astype(np.uint8)[:, None, None, None, None], (steps, 2, 16, 16, 3))
    proprio = np.tile(np.array([0.4, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=np.float32), (steps, 1))
    actions = np.zeros((steps, ACTION_DIM), dtype=np.float32)
    actions[:, 0] = 0.02 * level - 0.01
    actions[:, 6] = level > 0.5
    return Episode(
        views=np.ascontiguousarray(views),
        proprio=proprio,
        actions=actions,
        success=np.zeros(steps, dtype=bool),
        view_names=("wrist", "side"),
        seed=seed,
        succeeded=True,
    )


def test_training_lowers_the_loss() -> None:
    torch.manual_seed(0)
    frames = episode_frames([synthetic_episode()], TINY.chunk_horizon)
    model = SimBasePolicy(TINY)
    model.set_statistics(frames.proprio, frames.chunks.reshape(-1, ACTION_DIM))
    before = evaluate_loss(model, frames)
    losses = fit(model, frames, None)
    assert len(losses) == TINY.epochs
    assert evaluate_loss(model, frames) < 0.7 * before


def test_chunks_repeat_the_last_action_past_the_end() -> None:
    episode = synthetic_episode(steps=3)
    chunks = episode_frames([episode], 2).chunks
    np.testing.assert_array_equal(chunks[0], episode.actions[[0, 1]])
    np.testing.assert_array_equal(chunks[2], episode.actions[[2, 2]])


def test_random_shift_keeps_shape_and_content_range() -> None:
    images = torch.randint(0, 256, (3, 2, 16, 16, 3), dtype=torch.uint8)
    shifted = random_shift(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    assert torch.equal(random_shift(images, 0, torch.Generator()), images)


def test_onnx_export_matches_torch(tmp_path: Path) -> None:
    frames = episode_frames([synthetic_episode()], TINY.chunk_horizon)
    model = SimBasePolicy(TINY)
    model.set_statistics(frames.proprio, frames.chunks.reshape(-1, ACTION_DIM))
    path = tmp_path / "policy.onnx"
    export_onnx(model, path, 16, 16)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images, proprio = frames.views[:3], frames.proprio[:3]
    (actions,) = session.run(["actions"], {"images": images, "proprio": proprio})
    with torch.no_grad():
        expected = model(torch.from_numpy(images), torch.from_numpy(proprio)).numpy()
    assert actions.shape == (3, TINY.chunk_horizon, ACTION_DIM)
    np.testing.assert_allclose(actions, expected, atol=1e-4)
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert metadata["views"] == "wrist,side"


def test_shipped_model_keeps_the_base_policy_contract() -> None:
    assert SHIPPED.is_file(), f"{SHIPPED} is missing: run scripts/train_sim_models.sh"
    assert SHIPPED.stat().st_size < 10e6
    policy = OnnxPolicy(SHIPPED, ("wrist", "side"), providers=["CPUExecutionProvider"])
    images, proprio = (i for i in policy.session.get_inputs())
    assert (images.name, images.type, images.shape[1:]) == ("images", "tensor(uint8)", [2, 128, 128, 3])
    assert (proprio.name, proprio.type, proprio.shape[1:]) == ("proprio", "tensor(float)", [PROPRIO_DIM])
    (output,) = policy.session.get_outputs()
    assert output.name == "actions" and output.shape[2:] == [ACTION_DIM]
    feed = {
        "images": np.zeros((2, 2, 128, 128, 3), dtype=np.uint8),
        "proprio": np.tile(np.array([0.3, 0.0, 0.48, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=np.float32), (2, 1)),
    }
    (actions,) = policy.session.run(["actions"], feed)
    assert actions.shape[0] == 2 and np.isfinite(actions).all()
