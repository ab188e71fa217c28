"""Tiny converted datasets for the Stage 3 fine-tuning tests, and a tiny model to train on them.

Episodes are the data tests' synthetic ones (:mod:`tests.pld_ros.data.synthetic`): moving patterns
in a wrist (32 x 32) and a side (24 x 40) camera, every frame's state naming its tick and episode,
written with the project's own LeRobot v3.0 and HDF5 writers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pld_ros.data.hdf5_dataset import Hdf5Writer
from pld_ros.data.lerobot_dataset import LeRobotWriter
from pld_ros.data.sft_episode import SftEpisode
from pld_ros.models.resnet10 import ResNet10Config
from tests.pld_ros.data.synthetic import FPS, episode

VIEWS = ("wrist", "side")
CAMERAS = {"wrist": (32, 32), "side": (24, 40)}
SIZE = 16
"""Height and width the tiny model takes (the cameras are resized to it)."""

TINY_BACKBONE: dict[str, object] = {
    "encoder": ResNet10Config(widths=(8, 8, 16, 16), embedding_dim=8),
    "hidden_dim": 32,
    "num_layers": 1,
    "image_size": (SIZE, SIZE),
    "chunk_horizon": 2,
}
TINY_HEADS: dict[str, dict[str, object]] = {
    "flow": {**TINY_BACKBONE, "flow_hidden_dim": 32, "flow_layers": 1, "num_inference_steps": 3},
    "ar": {**TINY_BACKBONE, "num_bins": 16, "model_dim": 16, "num_heads": 2, "decoder_layers": 1},
}
"""``policy_changes`` of a tiny model per head: milliseconds a step."""


def episodes(count: int, frames: int = 10, failed: Sequence[int] = (), first: int = 0) -> list[SftEpisode]:
    """Episodes ``first .. first + count - 1``; those in ``failed`` did not succeed."""
    return [
        episode(i, frames_count=frames, cameras=CAMERAS, success=i not in failed)
        for i in range(first, first + count)
    ]


def write_lerobot(root: Path, items: Sequence[SftEpisode]) -> Path:
    with LeRobotWriter(root, FPS, robot_type="fr3") as writer:
        for item in items:
            writer.add(item)
    return root


def write_hdf5(path: Path, items: Sequence[SftEpisode]) -> Path:
    with Hdf5Writer(path, FPS) as writer:
        for item in items:
            writer.add(item)
    return path
