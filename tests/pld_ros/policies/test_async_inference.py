"""Inference off the control thread: scheduling, latency hiding, faults and resets.

The policies here are fakes that sleep: a real VLA (300 ms on a GPU server) cannot run here, and
what is tested is the scheduling around it, not the model.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest

from pld_ros.core.action_chunks import ChunkBuffer
from pld_ros.core.observation import ACTION_DIM, Float32Array, Observation
from pld_ros.core.rate import RateKeeper
from pld_ros.policies.async_inference import AsyncInference, InferenceConfig

PERIOD = 0.05


class SleepyPolicy:
    """Sleeps ``latency`` s per call, then answers an ``horizon`` x 7 chunk; can be told to fail."""

    def __init__(self, latency: float, horizon: int) -> None:
        self.latency = latency
        self.horizon = horizon
        self.calls = 0
        self.resets = 0
        self.fail = False
        self.closed = False

    name = "fake:sleepy"
    connected = True

    def infer(self, observation: Observation) -> Float32Array:
        self.calls += 1
        time.sleep(self.latency)
        if self.fail:
            raise ConnectionError("server gone")
        return np.full((self.horizon, ACTION_DIM), observation.stamp, dtype=np.float32)

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        self.closed = True


def observation(stamp: float) -> Observation:
    return Observation(views={}, proprio=np.zeros(8, np.float32), prompt="", stamp=stamp)


def run_loop(
    runner: AsyncInference, ticks: int, buffer: ChunkBuffer
) -> tuple[list[float], list[bool], list[float]]:
    """Tick at 20 Hz; return each tick handler's duration, freshness and action age."""
    rate = RateKeeper(1.0 / PERIOD)
    durations, fresh, ages = [], [], []
    for tick in range(ticks):
        now = rate.wait()
        for chunk in runner.step(observation(now), tick):
            buffer.add(chunk)
        result = buffer.action_for(tick, now, gripper=0.0)
        durations.append(time.monotonic() - now)
        fresh.append(result.fresh)
        ages.append(result.age)
    return durations, fresh, ages


def test_a_fast_policy_is_synchronous_every_tick_gets_the_chunk_of_its_own_observation() -> None:
    policy = SleepyPolicy(latency=0.001, horizon=1)
    runner = AsyncInference(policy, InferenceConfig(control_period=PERIOD, execute_steps=1, wait_budget=0.02))
    try:
        _, fresh, ages = run_loop(runner, 20, ChunkBuffer())
    finally:
        runner.close()
    assert all(fresh) and max(ages) == 0.0  # row 0 of a chunk from this very tick
    assert policy.calls == 20 and policy.closed


def test_a_slow_policy_never_delays_the_tick_and_its_chunks_are_used_while_the_next_is_computed() -> None:
    """A 300 ms policy, H = 16, k = 8: after the first chunk every tick is fresh, ages bounded."""
    policy = SleepyPolicy(latency=0.3, horizon=16)
    config = InferenceConfig(control_period=PERIOD, execute_steps=8, wait_budget=0.005)
    runner = AsyncInference(policy, config)
    try:
        durations, fresh, ages = run_loop(runner, 60, ChunkBuffer())
        latency_ticks = runner.latency_ticks()
    finally:
        runner.close()
    assert max(durations) < config.wait_budget + 0.01, max(durations)
    first = fresh.index(True)
    assert 5 <= first <= 8  # the first chunk takes 300 ms (+ scheduling) to come
    assert all(fresh[first:]), fresh
    used = [a for a in ages if not math.isnan(a)]
    # Inferences run back to back (6 ticks each < k = 8 rows): a chunk arrives a latency after
    # its observation and is used until the next one arrives, another latency later.
    assert max(used) < 2 * 0.3 + 2 * PERIOD, max(used)
    assert latency_ticks in (6, 7)


def test_with_a_one_row_chunk_a_slow_policy_can_only_be_stale() -> None:
    policy = SleepyPolicy(latency=0.3, horizon=1)
    runner = AsyncInference(policy, InferenceConfig(control_period=PERIOD, execute_steps=1))
    try:
        durations, fresh, _ = run_loop(runner, 30, ChunkBuffer())
    finally:
        runner.close()
    assert not any(fresh) and max(durations) < 0.03
    assert policy.calls in (4, 5, 6)  # back to back, never more than one at a time


def test_a_chunk_is_requested_when_the_newest_runs_out_of_its_k_rows_within_the_latency() -> None:
    policy = SleepyPolicy(latency=0.0, horizon=10)
    runner = AsyncInference(policy, InferenceConfig(control_period=PERIOD, execute_steps=5, wait_budget=0.02))
    try:
        started = []
        for tick in range(12):
            if runner.step(observation(tick * PERIOD), tick):
                started.append(tick)
    finally:
        runner.close()
    assert started == [0, 5, 10]  # synchronous: exactly every k ticks


def test_a_failing_backend_is_counted_and_retried_without_stopping_the_worker() -> None:
    policy = SleepyPolicy(latency=0.0, horizon=4)
    runner = AsyncInference(policy, InferenceConfig(control_period=PERIOD, execute_steps=1, wait_budget=0.02))
    try:
        policy.fail = True
        assert runner.step(observation(0.0), 0) == []
        assert runner.step(observation(0.05), 1) == []
        stats = runner.stats()
        assert stats.faults == 2 and stats.last_error == "ConnectionError: server gone"
        policy.fail = False
        (chunk,) = runner.step(observation(0.1), 2)
        assert chunk.step == 2 and chunk.chunk_id == 1 and runner.stats().inferences == 1
    finally:
        runner.close()


def test_a_malformed_answer_is_a_fault_too() -> None:
    policy = SleepyPolicy(latency=0.0, horizon=4)
    policy.infer = lambda _obs: np.zeros((4, 3), np.float32)  # type: ignore[method-assign,assignment]
    runner = AsyncInference(policy, InferenceConfig(control_period=PERIOD, wait_budget=0.02))
    try:
        assert runner.step(observation(0.0), 0) == []
        assert "H x 7" in runner.stats().last_error
    finally:
        runner.close()


def test_a_reset_discards_the_chunk_in_flight_and_resets_the_backend_before_the_next_call() -> None:
    policy = SleepyPolicy(latency=0.1, horizon=4)
    runner = AsyncInference(policy, InferenceConfig(control_period=PERIOD, wait_budget=0.0))
    try:
        assert runner.step(observation(0.0), 0) == []
        time.sleep(0.03)  # the worker has taken the job
        runner.reset()
        time.sleep(0.15)
        assert runner.step(None, 1) == []  # the old episode's chunk is gone
        assert runner.stats().inferences == 1
        runner.step(observation(0.2), 2)
        deadline = time.monotonic() + 1.0
        chunks: list[object] = []
        while not chunks and time.monotonic() < deadline:
            chunks = list(runner.step(None, 3))
            time.sleep(0.01)
        assert len(chunks) == 1 and policy.resets == 1
    finally:
        runner.close()


def test_the_stats_give_inference_time_percentiles() -> None:
    policy = SleepyPolicy(latency=0.01, horizon=1)
    runner = AsyncInference(policy, InferenceConfig(control_period=PERIOD, wait_budget=0.04))
    try:
        assert math.isnan(runner.stats().latency_p50)
        for tick in range(5):
            runner.step(observation(tick * PERIOD), tick)
        stats = runner.stats()
        assert 0.01 <= stats.latency_p50 <= stats.latency_p99 < 0.04 and stats.latency > 0.0
    finally:
        runner.close()


def test_bad_scheduling_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="wait_budget"):
        InferenceConfig(control_period=PERIOD, wait_budget=PERIOD)
    with pytest.raises(ValueError, match="execute_steps"):
        InferenceConfig(control_period=PERIOD, execute_steps=0)


def test_close_does_not_wait_forever_for_a_hung_backend() -> None:
    release = threading.Event()
    policy = SleepyPolicy(latency=0.0, horizon=1)
    policy.infer = lambda _obs: (release.wait(5.0), np.zeros((1, 7), np.float32))[1]  # type: ignore[method-assign,assignment]
    runner = AsyncInference(policy, InferenceConfig(control_period=PERIOD, wait_budget=0.0))
    runner.step(observation(0.0), 0)
    start = time.monotonic()
    runner.close(timeout=0.2)
    assert time.monotonic() - start < 0.5 and policy.closed
    release.set()
