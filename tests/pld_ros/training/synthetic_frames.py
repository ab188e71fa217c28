"""Tiny labelled episodes for the reward-classifier tests, and the tiny model they train.

A frame shows each view as a grey, noisy 16x16 image with a 6x6 square at a random place: red in
both views when the frame is positive (the task is done), blue in both when it is negative. A
*hard negative* is red in the wrist view only: what a grasped but not yet lifted cube is to the
real classifier, alike enough to a success to be called one by a model that never saw it.
"""

from __future__ import annotations

import numpy as np

from pld_ros.models.resnet10 import ResNet10Config
from pld_ros.models.success_classifier import SuccessClassifierConfig
from pld_ros.training.reward_classifier import RewardTrainingConfig
from pld_ros.training.reward_dataset import LabelledEpisode

SIZE = 16
RED = (200, 30, 30)
BLUE = (30, 30, 200)
VIEWS = ("wrist", "side")

TINY = RewardTrainingConfig(
    # Widths of 8 and up: with 4 channels GroupNorm's 4 groups normalize every channel alone and
    # the colour, the only cue here, is normalized away.
    model=SuccessClassifierConfig(
        encoder=ResNet10Config(widths=(8, 8, 16, 16), embedding_dim=8), hidden_dim=16, num_layers=1
    ),
    epochs=10,
    mining_epochs=4,
    batch_size=16,
    learning_rate=3e-3,
    shift_pixels=1,
    threads=1,
)
"""Seconds, not minutes, of training on 24 episodes of 12 frames."""


def episode(index: int, steps: int = 12, positives: int = 4, hard: int = 0) -> LabelledEpisode:
    """Episode ``e<index>``: the last ``positives`` frames positive, ``hard`` of the others hard negatives."""
    rng = np.random.default_rng(index)
    positive = np.arange(steps) >= steps - positives
    red = np.repeat(positive[:, None], len(VIEWS), axis=1)
    red[rng.choice(np.flatnonzero(~positive), hard, replace=False), 0] = True
    views = (100 + rng.integers(-10, 10, (steps, len(VIEWS), SIZE, SIZE, 3))).astype(np.uint8)
    for t in range(steps):
        for v in range(len(VIEWS)):
            row, col = rng.integers(0, SIZE - 6, 2)
            views[t, v, row : row + 6, col : col + 6] = RED if red[t, v] else BLUE
    return LabelledEpisode(
        episode_id=f"e{index:03d}",
        source="test:synthetic",
        view_names=VIEWS,
        heads=("lift",),
        views=views,
        labels=positive.astype(np.int8)[:, None],
        stamps=np.arange(steps, dtype=np.float64) * 0.05,
    )
