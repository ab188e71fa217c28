from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pld_ros.learning.episode_steps import EpisodeSteps
from pld_ros.learning.episode_store import Buffer
from pld_ros.learning.learner import Learner
from pld_ros.models.residual_actor import ResidualActorConfig
from pld_ros.profile import Trainer

CONFIG = Trainer(
    batch_size=8,
    critic_hidden_dim=16,
    onthefly_samples=2,
    cql_samples=2,
    calql_pretrain_steps=5,
    updates_per_step=0.5,
)
ACTOR = ResidualActorConfig(num_views=0, state_dim=3, hidden_dim=16, num_layers=1)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def episode(steps: int, success: bool, seed: int = 0) -> EpisodeSteps:
    rng = np.random.default_rng(seed)
    reward = np.zeros(steps, dtype=np.float32)
    reward[-1] = float(success)
    return EpisodeSteps(
        state=rng.normal(size=(steps + 1, 3)).astype(np.float32),
        base_action=rng.normal(size=(steps + 1, 7)).astype(np.float32),
        residual=rng.uniform(-1, 1, size=(steps, 7)).astype(np.float32),
        reward=reward,
        terminal=success,
    )


def learner(warmup: int = 2) -> Learner:
    return Learner(CONFIG, ACTOR, capacity=1000, warmup_episodes=warmup, seed=0, device="cpu")


def test_nothing_is_learned_during_the_warm_up() -> None:
    stage1 = learner(warmup=2)
    stage1.add(episode(10, True), "offline")
    assert not stage1.warmed_up and stage1.update_budget == 0
    assert stage1.train() == {}
    assert stage1.sac.pretrain_updates == 0 and stage1.sac.updates == 0


def test_cal_ql_pretraining_runs_once_then_updates_follow_the_data() -> None:
    stage1 = learner(warmup=2)
    stage1.add(episode(10, True, seed=1), "offline")
    stage1.add(episode(12, False, seed=2), "online")  # the warm-up's last episode
    assert stage1.warmed_up and stage1.update_budget == 0  # warm-up data buys no online updates
    metrics = stage1.train()
    assert stage1.sac.pretrain_updates == CONFIG.calql_pretrain_steps and stage1.sac.updates == 0
    assert "pretrain_calql_loss" in metrics
    stage1.add(episode(20, False, seed=3), "online")
    assert stage1.update_budget == 10  # 20 transitions at 0.5 updates each
    metrics = stage1.train(max_updates=4)
    assert stage1.sac.updates == 4 and "critic_loss" in metrics and "pretrain_calql_loss" not in metrics
    stage1.train()
    assert stage1.sac.updates == 10 and stage1.update_budget == 0
    assert stage1.sac.pretrain_updates == CONFIG.calql_pretrain_steps  # not repeated


def test_max_updates_bounds_the_pretraining_too_so_the_caller_can_take_new_episodes() -> None:
    stage1 = learner(warmup=0)
    stage1.add(episode(10, True, seed=1), "offline")
    stage1.add(episode(20, False, seed=2), "online")
    stage1.train(max_updates=2)
    assert stage1.sac.pretrain_updates == 2 and stage1.sac.updates == 0
    # The rest of the pretraining, then online updates with what is left of the call's steps.
    stage1.train(max_updates=CONFIG.calql_pretrain_steps - 2 + 3)
    assert stage1.sac.pretrain_updates == CONFIG.calql_pretrain_steps and stage1.sac.updates == 3


def test_training_stops_when_asked() -> None:
    stage1 = learner(warmup=0)
    stage1.add(episode(30, True), "offline")
    stage1.add(episode(30, False, seed=4), "online")
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > CONFIG.calql_pretrain_steps + 3

    stage1.train(stop=stop)
    assert stage1.sac.pretrain_updates == CONFIG.calql_pretrain_steps and stage1.sac.updates == 3


def test_a_restarted_learner_refilled_from_the_same_episodes_owes_no_updates(tmp_path: Path) -> None:
    episodes: list[tuple[EpisodeSteps, Buffer]] = [
        (episode(10, True, seed=5), "offline"),
        (episode(16, False, seed=6), "online"),
    ]
    first = learner(warmup=1)
    for steps, buffer in episodes:
        first.add(steps, buffer)
    first.train()
    first.save(tmp_path / "checkpoint")
    restarted = learner(warmup=1)
    restarted.load(tmp_path / "checkpoint")
    for steps, buffer in episodes:
        restarted.add(steps, buffer)
    assert restarted.sac.updates == first.sac.updates == 8 and restarted.update_budget == 0
    assert restarted.pretrained
    state = np.zeros(3, dtype=np.float32)
    base = np.zeros(7, dtype=np.float32)
    np.testing.assert_allclose(
        restarted.sac.act(state, base, deterministic=True), first.sac.act(state, base, deterministic=True)
    )
