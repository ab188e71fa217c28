"""Which action each control tick executes, given the base policy's chunks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pld_ros.core.action_chunks import Chunk, ChunkBuffer, ChunkConfig
from pld_ros.core.observation import ACTION_DIM

PERIOD = 0.05


def chunk(step: int, horizon: int, value: float, chunk_id: int = 1, gripper: float = 0.3) -> Chunk:
    """Row i is ``value + i`` in tx, so the row used can be read back from the action."""
    actions = np.zeros((horizon, ACTION_DIM), dtype=np.float32)
    actions[:, 0] = value + np.arange(horizon)
    actions[:, 6] = gripper
    return Chunk(actions=actions, step=step, stamp=step * PERIOD, chunk_id=chunk_id)


def test_each_tick_takes_its_row_of_the_chunk_and_holds_once_the_chunk_runs_out() -> None:
    buffer = ChunkBuffer()
    buffer.add(chunk(step=10, horizon=3, value=100.0, chunk_id=7))
    for tick in (10, 11, 12):
        result = buffer.action_for(tick, tick * PERIOD + 0.01, gripper=0.9)
        assert result.fresh and result.action[0] == 100.0 + tick - 10
        assert result.chunk_index == tick - 10 and result.chunk_id == 7 and result.chunks_averaged == 1
        assert result.age == pytest.approx((tick - 10) * PERIOD + 0.01)
    hold = buffer.action_for(13, 13 * PERIOD, gripper=0.9)
    assert not hold.fresh and math.isnan(hold.age) and hold.chunks_averaged == 0
    # The hold keeps the gripper where the last executed row put it, not where it was measured.
    np.testing.assert_array_equal(hold.action, [0, 0, 0, 0, 0, 0, np.float32(0.3)])


def test_before_any_chunk_the_hold_keeps_the_measured_gripper() -> None:
    result = ChunkBuffer().action_for(0, 0.0, gripper=0.8)
    assert not result.fresh
    np.testing.assert_array_equal(result.action, [0, 0, 0, 0, 0, 0, np.float32(0.8)])


def test_a_tick_before_the_chunks_observation_is_not_covered() -> None:
    buffer = ChunkBuffer()
    buffer.add(chunk(step=5, horizon=4, value=0.0))
    assert not buffer.action_for(4, 0.2, gripper=0.0).fresh
    assert buffer.action_for(5, 0.25, gripper=0.0).fresh


def test_the_newest_chunk_wins_even_when_it_arrives_out_of_order() -> None:
    buffer = ChunkBuffer()
    buffer.add(chunk(step=4, horizon=10, value=400.0, chunk_id=2))
    buffer.add(chunk(step=0, horizon=10, value=0.0, chunk_id=1))
    result = buffer.action_for(6, 0.3, gripper=0.0)
    assert result.action[0] == 402.0 and result.chunk_id == 2 and result.chunk_index == 2
    assert buffer.newest is not None and buffer.newest.chunk_id == 2


def test_temporal_ensembling_weights_chunks_by_their_age_in_chunks() -> None:
    decay = 0.5
    buffer = ChunkBuffer(ChunkConfig(temporal_ensemble=True, ensemble_decay=decay))
    buffer.add(chunk(step=0, horizon=10, value=0.0, chunk_id=1))
    buffer.add(chunk(step=2, horizon=10, value=100.0, chunk_id=2))
    buffer.add(chunk(step=4, horizon=10, value=200.0, chunk_id=3))
    result = buffer.action_for(5, 0.25, gripper=0.0)
    rows = np.array([5.0, 103.0, 201.0])  # oldest to newest
    weights = np.exp(-decay * np.array([2.0, 1.0, 0.0]))
    assert result.action[0] == pytest.approx(float(weights @ rows / weights.sum()), rel=1e-6)
    assert result.chunks_averaged == 3 and result.chunk_id == 3 and result.chunk_index == 1
    assert result.age == pytest.approx(0.25 - 4 * PERIOD)
    # Past the oldest chunk's end only the two newer ones are averaged.
    assert buffer.action_for(10, 0.5, gripper=0.0).chunks_averaged == 2


def test_zero_decay_averages_plainly_and_negative_decay_favours_the_oldest() -> None:
    plain = ChunkBuffer(ChunkConfig(temporal_ensemble=True, ensemble_decay=0.0))
    old_first = ChunkBuffer(ChunkConfig(temporal_ensemble=True, ensemble_decay=-2.0))
    for buffer in (plain, old_first):
        buffer.add(chunk(step=0, horizon=4, value=0.0, chunk_id=1))
        buffer.add(chunk(step=1, horizon=4, value=10.0, chunk_id=2))
    assert plain.action_for(1, 0.05, gripper=0.0).action[0] == pytest.approx(5.5)
    assert old_first.action_for(1, 0.05, gripper=0.0).action[0] < 5.5


def test_a_reset_drops_every_chunk_and_the_last_gripper_target() -> None:
    buffer = ChunkBuffer()
    buffer.add(chunk(step=0, horizon=10, value=0.0, gripper=1.0))
    assert buffer.action_for(0, 0.0, gripper=0.0).fresh
    buffer.reset()
    result = buffer.action_for(1, 0.05, gripper=0.2)
    assert not result.fresh and result.action[6] == pytest.approx(0.2)
    assert len(buffer) == 0 and buffer.newest is None


def test_chunks_that_can_cover_no_later_tick_are_forgotten() -> None:
    buffer = ChunkBuffer(ChunkConfig(max_chunks=3))
    for step in range(5):
        buffer.add(chunk(step=step, horizon=2, value=0.0, chunk_id=step + 1))
    assert len(buffer) == 3
    buffer.action_for(5, 0.25, gripper=0.0)
    assert len(buffer) == 1  # only the chunk of tick 4 still has a row (for tick 5)


def test_a_malformed_chunk_or_config_is_refused() -> None:
    with pytest.raises(ValueError, match="H x 7"):
        Chunk(actions=np.zeros((3, 6), dtype=np.float32), step=0, stamp=0.0, chunk_id=1)
    with pytest.raises(ValueError, match="ensemble_decay"):
        ChunkBuffer(ChunkConfig(ensemble_decay=math.inf))
