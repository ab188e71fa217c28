"""Stage 1's schedule around :class:`~pld_ros.learning.residual_sac.ResidualSAC`: the two replay
buffers, the warm-up, the Cal-QL pretraining and the online updates, paced by the data.

The order, as in PLD:

1. Warm-up: the first ``warmup_episodes`` episodes (the base policy alone) only fill the buffers;
   their successes are the offline buffer (:func:`~pld_ros.learning.episode_store.buffer_for`
   decides for robot episodes).
2. Once the warm-up is complete, ``calql_pretrain_steps`` Cal-QL critic steps on the offline
   buffer, so the critic starts calibrated and the actor starts from the base policy (a fresh
   actor's residual is zero).
3. Online: RLPD symmetric batches (``offline_fraction`` from the offline buffer), at most
   ``updates_per_step`` updates per transition received since the warm-up ended.

The same object drives the trainer node (robot episodes arrive over ROS) and the robosuite
benchmark (episodes from a simulator loop), so both run one recipe.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pld_ros.learning.episode_steps import EpisodeSteps
from pld_ros.learning.episode_store import Buffer
from pld_ros.learning.replay_buffer import ReplayBuffer, sample_symmetric
from pld_ros.learning.residual_sac import ResidualSAC
from pld_ros.models.residual_actor import ResidualActorConfig
from pld_ros.profile import Trainer


@dataclass(frozen=True)
class LearnerProgress:
    """Counters for metrics topics and logs."""

    episodes: int
    offline_transitions: int
    online_transitions: int
    pretrain_updates: int
    updates: int
    warmed_up: bool


class Learner:
    """The buffers and the schedule of Stage 1 (see the module docstring).

    ``capacity``: transitions per buffer. ``warmup_episodes``: episodes before any learning.
    ``seed``: the batches' sampling stream (the networks' initialization follows torch's seed).
    """

    def __init__(
        self,
        config: Trainer,
        actor: ResidualActorConfig,
        *,
        capacity: int,
        warmup_episodes: int,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        if warmup_episodes < 0:
            raise ValueError(f"warmup_episodes must not be negative, got {warmup_episodes}")
        self.config = config
        self.sac = ResidualSAC(config, actor, device)
        self.offline = ReplayBuffer(capacity, config.discount, config.reward_bias, config.n_step)
        self.online = ReplayBuffer(capacity, config.discount, config.reward_bias, config.n_step)
        self.warmup_episodes = warmup_episodes
        self.episodes = 0
        self._rng = np.random.default_rng(seed)
        self._online_steps = 0  # transitions received after the warm-up: the update budget

    # -- data ------------------------------------------------------------------------------------

    def buffer(self, name: Buffer) -> ReplayBuffer:
        """The replay buffer called ``name``."""
        return self.offline if name == "offline" else self.online

    def add(self, steps: EpisodeSteps, buffer: Buffer) -> None:
        """One episode's learning steps into ``buffer``."""
        self.buffer(buffer).add(steps)
        if self.warmed_up:
            self._online_steps += len(steps)
        self.episodes += 1

    @property
    def warmed_up(self) -> bool:
        return self.episodes >= self.warmup_episodes

    @property
    def pretrained(self) -> bool:
        return self.sac.pretrain_updates >= self.config.calql_pretrain_steps or not len(self.offline)

    @property
    def update_budget(self) -> int:
        """Online updates the data received so far allows and that have not run yet."""
        if not self.warmed_up or len(self.offline) + len(self.online) == 0:
            return 0
        return max(0, int(self._online_steps * self.config.updates_per_step) - self.sac.updates)

    def progress(self) -> LearnerProgress:
        return LearnerProgress(
            episodes=self.episodes,
            offline_transitions=len(self.offline),
            online_transitions=len(self.online),
            pretrain_updates=self.sac.pretrain_updates,
            updates=self.sac.updates,
            warmed_up=self.warmed_up,
        )

    # -- learning --------------------------------------------------------------------------------

    def train(
        self, max_updates: int | None = None, stop: Callable[[], bool] = lambda: False
    ) -> dict[str, float]:
        """Pretrain if due, then run the update budget, checking ``stop`` between updates: at most
        ``max_updates`` steps in all, pretraining steps included, so that a caller that feeds the
        buffers between calls is not shut out for the whole pretraining (hours on a CPU with
        images). Returns the mean of each metric over the steps run (empty if none)."""
        if not self.warmed_up:
            return {}
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}

        def record(metrics: dict[str, float]) -> None:
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1

        batch_size = self.config.batch_size
        steps_left = math.inf if max_updates is None else max_updates
        while not self.pretrained and steps_left > 0 and not stop():
            record(
                {
                    f"pretrain_{k}": v
                    for k, v in self.sac.pretrain_step(self.offline.sample(batch_size, self._rng)).items()
                }
            )
            steps_left -= 1
        budget = 0 if not self.pretrained else int(min(self.update_budget, steps_left))
        for _ in range(budget):
            if stop():
                break
            batch = sample_symmetric(
                self.offline, self.online, batch_size, self.config.offline_fraction, self._rng
            )
            record(self.sac.update(batch))
        return {key: totals[key] / counts[key] for key in totals}

    # -- persistence -----------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """The learner's networks and counters (not the buffers: they are rebuilt from the
        persisted episodes on restart)."""
        self.sac.save(directory)

    def load(self, directory: Path) -> None:
        self.sac.load(directory)
