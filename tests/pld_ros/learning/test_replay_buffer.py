from __future__ import annotations

import numpy as np
import pytest

from pld_ros.learning.episode_steps import EpisodeSteps
from pld_ros.learning.replay_buffer import (
    ReplayBuffer,
    TransitionBatch,
    batch_of,
    sample_symmetric,
    symmetric_counts,
)


def episode(marker: float, length: int, terminal: bool = True, images: bool = False) -> EpisodeSteps:
    """An episode whose state at step t is ``[marker, t]`` and whose base action's first value is
    ``marker + t``, so a transition says where it comes from."""
    steps = np.arange(length + 1, dtype=np.float32)
    base = np.zeros((length + 1, 7), dtype=np.float32)
    base[:, 0] = marker + steps
    reward = np.zeros(length, dtype=np.float32)
    reward[-1] = 1.0 if terminal else 0.0
    views = None
    if images:
        views = np.zeros((length + 1, 2, 4, 4, 3), dtype=np.uint8)
        views[:, :, 0, 0, 0] = steps[:, None]
    return EpisodeSteps(
        state=np.stack([np.full(length + 1, marker, dtype=np.float32), steps], axis=1),
        base_action=base,
        residual=np.full((length, 7), 0.5, dtype=np.float32),
        reward=reward,
        terminal=terminal,
        images=views,
    )


def everything(buffer: ReplayBuffer) -> TransitionBatch:
    rng = np.random.default_rng(0)
    return buffer.sample(20 * len(buffer), rng)


def test_next_observation_is_the_following_row_of_the_same_episode() -> None:
    buffer = ReplayBuffer(capacity=100, discount=0.9)
    buffer.add(episode(1.0, 3, terminal=True))
    buffer.add(episode(2.0, 4, terminal=False))
    batch = everything(buffer)
    state, next_state = batch.state.numpy(), batch.next_state.numpy()
    assert np.array_equal(next_state[:, 0], state[:, 0]), "a transition crossed an episode boundary"
    assert np.array_equal(next_state[:, 1], state[:, 1] + 1.0)
    assert np.array_equal(batch.next_base_action[:, 0].numpy(), state[:, 0] + state[:, 1] + 1.0)
    # Every transition was drawn, none starts at an episode's final observation.
    starts = {(float(m), float(t)) for m, t in state}
    assert starts == {(1.0, t) for t in range(3)} | {(2.0, t) for t in range(4)}


def test_only_the_last_step_of_a_terminal_episode_is_done() -> None:
    buffer = ReplayBuffer(capacity=100, discount=0.9)
    buffer.add(episode(1.0, 3, terminal=True))
    buffer.add(episode(2.0, 4, terminal=False))
    batch = everything(buffer)
    state, done = batch.state.numpy(), batch.done.numpy()
    expected = (state[:, 0] == 1.0) & (state[:, 1] == 2.0)
    assert np.array_equal(done == 1.0, expected)
    # The truncated episode's last transition bootstraps from its final observation.
    last = (state[:, 0] == 2.0) & (state[:, 1] == 3.0)
    assert np.all(batch.next_state.numpy()[last] == [2.0, 4.0])


def test_an_n_step_transition_sums_its_rewards_and_stops_at_the_episode_end() -> None:
    buffer = ReplayBuffer(capacity=100, discount=0.9, n_step=3)
    stored = episode(1.0, 5, terminal=True)
    stored.reward[:] = [1.0, 2.0, 3.0, 4.0, 5.0]
    buffer.add(stored)
    buffer.add(episode(2.0, 4, terminal=False))
    batch = everything(buffer)
    state, steps = batch.state.numpy(), batch.steps.numpy().astype(int)
    first = state[:, 0] == 1.0
    t = state[first, 1].astype(int)
    span = np.minimum(3, 5 - t)
    assert np.array_equal(steps[first], span)
    expected = [sum(0.9**k * stored.reward[i + k] for k in range(n)) for i, n in zip(t, span, strict=True)]
    np.testing.assert_allclose(batch.reward.numpy()[first], expected, rtol=1e-6)
    # The next observation is k steps on, in the same episode; only spans reaching the terminal
    # step are done, and the truncated episode's spans never are.
    np.testing.assert_array_equal(batch.next_state.numpy()[:, 1], state[:, 1] + steps)
    np.testing.assert_array_equal(batch.next_state.numpy()[:, 0], state[:, 0])
    assert np.array_equal(batch.done.numpy()[first] == 1.0, t + span == 5)
    assert not batch.done.numpy()[~first].any()


def test_one_step_transitions_span_one_step() -> None:
    buffer = ReplayBuffer(capacity=100, discount=0.9)
    buffer.add(episode(1.0, 4))
    assert np.all(everything(buffer).steps.numpy() == 1.0)
    with pytest.raises(ValueError, match="n_step"):
        ReplayBuffer(capacity=100, discount=0.9, n_step=0)


def test_monte_carlo_returns_include_the_reward_bias() -> None:
    buffer = ReplayBuffer(capacity=100, discount=0.9, reward_bias=-1.0)
    stored = episode(1.0, 3, terminal=True)
    buffer.add(stored)
    batch = everything(buffer)
    steps = batch.state[:, 1].numpy().astype(int)
    biased_rewards = stored.reward - 1.0
    expected = [sum(0.9**k * biased_rewards[t + k] for k in range(3 - t)) for t in range(3)]
    np.testing.assert_allclose(batch.mc_return.numpy(), np.array(expected)[steps], rtol=1e-5)
    assert np.array_equal(batch.reward.numpy(), stored.reward[steps]), "rewards are stored raw"


def test_whole_oldest_episodes_are_evicted_beyond_the_capacity() -> None:
    buffer = ReplayBuffer(capacity=10, discount=0.9)
    for marker in (1.0, 2.0, 3.0):
        buffer.add(episode(marker, 4))
    assert len(buffer) == 8 and buffer.episodes == 2
    assert set(everything(buffer).state[:, 0].tolist()) == {2.0, 3.0}
    with pytest.raises(ValueError, match="exceeds the capacity"):
        buffer.add(episode(4.0, 11))


def test_the_size_of_a_transition_is_known_once_the_shapes_are() -> None:
    buffer = ReplayBuffer(capacity=10, discount=0.9)
    assert buffer.bytes_per_transition is None
    buffer.add(episode(1.0, 4, images=True))
    # remaining (int64), state (2), base action (7), residual (7), reward, done, return: float32;
    # two 4x4 RGB views: bytes.
    assert buffer.bytes_per_transition == 8 + 4 * (2 + 7 + 7 + 3) + 2 * 4 * 4 * 3


def test_many_adds_keep_exactly_the_newest_episodes_intact() -> None:
    # Enough episodes of random lengths to go through several compactions and growths.
    rng = np.random.default_rng(3)
    buffer = ReplayBuffer(capacity=60, discount=0.9)
    lengths = rng.integers(1, 20, size=80)
    for index, length in enumerate(lengths):
        buffer.add(episode(float(index), int(length), images=True))
    kept, total = [], 0
    for index in range(len(lengths) - 1, -1, -1):
        if total + lengths[index] > 60:
            break
        kept.append(index)
        total += int(lengths[index])
    assert len(buffer) == total and buffer.episodes == len(kept)
    batch = everything(buffer)
    assert set(batch.state[:, 0].tolist()) == {float(i) for i in kept}
    state, next_state = batch.state.numpy(), batch.next_state.numpy()
    assert np.array_equal(next_state, state + np.array([0.0, 1.0], dtype=np.float32))
    assert batch.images is not None and batch.next_images is not None
    assert np.array_equal(batch.images[:, 0, 0, 0, 0].numpy(), state[:, 1])
    assert np.array_equal(batch.next_images[:, 1, 0, 0, 0].numpy(), state[:, 1] + 1)


def test_mismatched_episodes_and_empty_buffers_are_rejected() -> None:
    buffer = ReplayBuffer(capacity=100, discount=0.9)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(4, np.random.default_rng(0))
    buffer.add(episode(1.0, 3))
    with pytest.raises(ValueError, match="images"):
        buffer.add(episode(2.0, 3, images=True))
    wider = episode(2.0, 3)
    with pytest.raises(ValueError, match="state"):
        buffer.add(
            EpisodeSteps(
                np.hstack([wider.state, wider.state]), wider.base_action, wider.residual, wider.reward, True
            )
        )


@pytest.mark.parametrize(
    ("fraction", "offline", "online", "expected"),
    [
        (0.5, 10, 10, (128, 128)),
        (0.25, 10, 10, (64, 192)),
        (0.5, 10, 0, (256, 0)),
        (0.5, 0, 10, (0, 256)),
    ],
)
def test_symmetric_counts(fraction: float, offline: int, online: int, expected: tuple[int, int]) -> None:
    assert symmetric_counts(256, fraction, offline, online) == expected


def test_a_symmetric_batch_mixes_both_buffers_in_the_given_proportion() -> None:
    offline, online = ReplayBuffer(100, 0.9), ReplayBuffer(100, 0.9)
    offline.add(episode(-1.0, 5))
    rng = np.random.default_rng(0)
    only_offline = sample_symmetric(offline, online, 64, 0.5, rng)
    assert len(only_offline) == 64 and bool(np.all(only_offline.state[:, 0].numpy() == -1.0))
    online.add(episode(1.0, 5))
    batch = sample_symmetric(offline, online, 64, 0.25, rng)
    markers = batch.state[:, 0].numpy()
    assert np.array_equal(markers, np.array([-1.0] * 16 + [1.0] * 48, dtype=np.float32))
    with pytest.raises(ValueError, match="empty"):
        sample_symmetric(ReplayBuffer(10, 0.9), ReplayBuffer(10, 0.9), 8, 0.5, rng)


def test_buffers_with_and_without_images_do_not_mix_in_a_batch() -> None:
    with_images, without = ReplayBuffer(100, 0.9), ReplayBuffer(100, 0.9)
    with_images.add(episode(1.0, 2, images=True))
    without.add(episode(2.0, 2))
    rows = np.array([0], dtype=np.int64)
    with pytest.raises(ValueError, match="images"):
        batch_of([with_images.gather(rows), without.gather(rows)])
