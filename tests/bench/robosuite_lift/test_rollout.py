from __future__ import annotations

import numpy as np
import pytest

from bench.robosuite_lift.env import STATE_DIM, Step
from bench.robosuite_lift.rollout import EpisodeRecord, evaluate, executing_base, run_episode
from pld_ros.core.observation import ACTION_DIM, Float32Array


class CountingEnv:
    """State = [seed, steps, 0...]; success after ``seed`` steps when the seed is below the horizon."""

    def __init__(self, horizon: int) -> None:
        self.horizon = horizon
        self.seed = 0
        self.steps = 0

    def _state(self) -> Float32Array:
        state = np.zeros(STATE_DIM, dtype=np.float32)
        state[:2] = self.seed, self.steps
        return state

    def reset(self, seed: int) -> Step:
        self.seed, self.steps = seed, 0
        return Step(self._state(), 0.0, False, False)

    def step(self, action: Float32Array) -> Step:
        self.steps += 1
        success = self.steps == self.seed
        return Step(self._state(), float(success), success, not success and self.steps >= self.horizon)


def residual_on_top(state: Float32Array, t: int) -> tuple[Float32Array, Float32Array]:
    base = np.full(ACTION_DIM, 0.1, dtype=np.float32)
    return base, base + np.float32(t)


def test_an_episode_records_aligned_transitions_up_to_the_success() -> None:
    record = run_episode(CountingEnv(horizon=10), residual_on_top, seed=4)
    assert record.length == 4 and record.success and not record.truncated
    assert np.array_equal(record.states[:, 1], [0, 1, 2, 3])
    assert np.array_equal(record.next_states[:, 1], [1, 2, 3, 4])
    assert np.array_equal(record.rewards, [0, 0, 0, 1]) and np.array_equal(record.dones, [0, 0, 0, 1])
    assert np.allclose(record.base_actions, 0.1)
    assert np.allclose(record.actions[:, 0], [0.1, 1.1, 2.1, 3.1])


def test_an_episode_without_success_is_truncated_at_the_horizon_with_no_terminal() -> None:
    record: EpisodeRecord = run_episode(CountingEnv(horizon=5), residual_on_top, seed=9)
    assert record.length == 5 and record.truncated and not record.success
    assert not record.dones.any() and not record.rewards.any()


def test_evaluation_counts_successes_over_consecutive_seeds() -> None:
    policy = executing_base(lambda state, t: np.zeros(ACTION_DIM, dtype=np.float32))
    # Seeds 3..7 with a horizon of 5: seeds 3, 4, 5 succeed (3, 4, 5 steps), 6 and 7 time out.
    result = evaluate(policy, CountingEnv(horizon=5), episodes=5, seed=3)
    assert result.successes == 3 and result.success_rate == pytest.approx(0.6)
    assert result.mean_length == pytest.approx((3 + 4 + 5 + 5 + 5) / 5)
