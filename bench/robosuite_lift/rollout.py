"""The episode loop and the evaluation every method of the benchmark shares.

A policy is an :data:`ActFn`: given the state and the step index within the episode (0 starts a
new episode, so a stateful policy resets there), it returns the base policy's action and the
action to execute. Base alone executes the base action; PLD executes base + residual (and probes
with the base alone for the first steps); RLPD without a residual ignores the base action. One
loop records what every learner consumes: :class:`EpisodeRecord`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from pld_ros.core.observation import ACTION_DIM, Float32Array

from .env import STATE_DIM, Step

ActFn = Callable[[Float32Array, int], tuple[Float32Array, Float32Array]]
"""``(state, t) -> (base_action, executed_action)``, both 7-D in [-1, 1]."""


class Env(Protocol):
    """What the loop needs of an environment: :class:`~bench.robosuite_lift.env.LiftEnv`."""

    def reset(self, seed: int) -> Step: ...

    def step(self, action: Float32Array) -> Step: ...


@dataclass(frozen=True)
class EpisodeRecord:
    """One episode's transitions, T steps (T = :attr:`length`)."""

    seed: int
    """The reset seed: the episode's initial state."""
    states: Float32Array
    """``[T, STATE_DIM]`` state before each step."""
    base_actions: Float32Array
    """``[T, 7]`` what the base policy proposed."""
    actions: Float32Array
    """``[T, 7]`` what was executed (before the environment's clipping to [-1, 1])."""
    rewards: Float32Array
    """``[T]`` 1.0 on the success step, else 0.0."""
    next_states: Float32Array
    """``[T, STATE_DIM]`` state after each step."""
    dones: npt.NDArray[np.bool_]
    """``[T]`` the episode terminated here with success (a true terminal: no bootstrapping)."""
    truncated: bool
    """The episode ran out of time (its last transition is not terminal)."""

    @property
    def length(self) -> int:
        return len(self.rewards)

    @property
    def success(self) -> bool:
        return bool(self.dones[-1]) if self.length else False


def run_episode(env: Env, act_fn: ActFn, seed: int) -> EpisodeRecord:
    """Reset ``env`` with ``seed`` and run ``act_fn`` until success or the horizon."""
    step = env.reset(seed)
    states, bases, actions, rewards, next_states, dones = [], [], [], [], [], []
    t = 0
    while not step.done:
        base, executed = act_fn(step.state, t)
        states.append(step.state)
        step = env.step(executed)
        bases.append(base)
        actions.append(executed)
        rewards.append(step.reward)
        next_states.append(step.state)
        dones.append(step.terminated)
        t += 1
    return EpisodeRecord(
        seed=seed,
        states=np.asarray(states, dtype=np.float32).reshape(-1, STATE_DIM),
        base_actions=np.asarray(bases, dtype=np.float32).reshape(-1, ACTION_DIM),
        actions=np.asarray(actions, dtype=np.float32).reshape(-1, ACTION_DIM),
        rewards=np.asarray(rewards, dtype=np.float32),
        next_states=np.asarray(next_states, dtype=np.float32).reshape(-1, STATE_DIM),
        dones=np.asarray(dones, dtype=bool),
        truncated=step.truncated,
    )


@dataclass(frozen=True)
class Evaluation:
    """Outcome of :func:`evaluate`."""

    episodes: int
    successes: int
    mean_length: float
    """Mean steps per episode (successful episodes end early)."""
    steps_per_second: float
    """Environment steps per wall-clock second, policy included."""

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes

    def summary(self) -> str:
        return (
            f"success {self.successes}/{self.episodes} ({100 * self.success_rate:.0f} %), "
            f"mean length {self.mean_length:.1f} steps, {self.steps_per_second:.0f} steps/s"
        )


def evaluate(policy_fn: ActFn, env: Env, episodes: int, seed: int) -> Evaluation:
    """Run ``episodes`` episodes with reset seeds ``seed, seed + 1, ...``."""
    if episodes <= 0:
        raise ValueError("episodes must be positive")
    start = time.perf_counter()
    records = [run_episode(env, policy_fn, seed + i) for i in range(episodes)]
    steps = sum(r.length for r in records)
    return Evaluation(
        episodes=episodes,
        successes=sum(r.success for r in records),
        mean_length=steps / episodes,
        steps_per_second=steps / (time.perf_counter() - start),
    )


def executing_base(base: Callable[[Float32Array, int], Float32Array]) -> ActFn:
    """The :data:`ActFn` of a policy run alone: its action is both the base and the executed one."""

    def act(state: Float32Array, t: int) -> tuple[Float32Array, Float32Array]:
        action = base(state, t)
        return action, action

    return act
