"""SimRollouts in the real simulated franka_pick_cube world (franky-sim on 127.0.0.42), and the
episode files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pld_ros.core.observation import ACTION_DIM, PROPRIO_DIM, Observation, hold_action
from pld_ros.profile import FrankyArm, load_profile
from pld_ros.sim.franka_pick_cube import FrankaPickCubeWorld
from pld_ros.training.rollouts import (
    Episode,
    RolloutConfig,
    SimRollouts,
    episode_files,
    load_episode,
    save_episode,
)

pytestmark = pytest.mark.sim_in_process

HOST = "127.0.0.42"
SIZE = 64


@pytest.fixture(scope="module")
def rollouts(frozen_heap: None) -> Iterator[SimRollouts]:
    arm = load_profile("franka_pick_cube", sim=True).arms["arm"]
    assert isinstance(arm, FrankyArm)
    with (
        FrankaPickCubeWorld(HOST, render_width=SIZE, render_height=SIZE) as world,
        SimRollouts(world, arm, ("side", "wrist"), RolloutConfig(max_steps=12)) as runner,
    ):
        yield runner


def small_episode(steps: int = 4, succeeded: bool = False) -> Episode:
    return Episode(
        views=np.full((steps, 2, 8, 8, 3), 7, dtype=np.uint8),
        proprio=np.zeros((steps, PROPRIO_DIM), dtype=np.float32),
        actions=np.ones((steps, ACTION_DIM), dtype=np.float32),
        success=np.arange(steps) >= steps - 1,
        view_names=("wrist", "side"),
        seed=3,
        succeeded=succeeded,
    )


def test_policy_is_called_once_per_tick_and_everything_is_recorded(rollouts: SimRollouts) -> None:
    calls: list[Observation] = []
    down = np.array([0.0, 0.0, -0.01, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)

    def policy(observation: Observation) -> np.ndarray:
        calls.append(observation)
        return down

    episode = rollouts.run_episode(policy, seed=4)
    if episode.fault:
        pytest.skip(f"franky-sim's arm faulted (a loaded machine): {episode.fault}")
    assert len(calls) == len(episode) == 12
    assert episode.views.shape == (12, 2, SIZE, SIZE, 3)
    assert episode.view_names == ("side", "wrist")
    np.testing.assert_array_equal(episode.views[5, 1], calls[5].views["wrist"])
    np.testing.assert_array_equal(episode.proprio[5], calls[5].proprio)
    assert (episode.actions == down).all() and not episode.succeeded and not episode.success.any()
    # Each tick's action reaches the arm a tick later: it has moved down by the end.
    assert episode.proprio[-1, 2] < episode.proprio[0, 2] - 0.03
    # The views change while the arm moves.
    assert not np.array_equal(episode.views[0, 1], episode.views[-1, 1])


def test_reset_returns_home_and_moves_the_cube(rollouts: SimRollouts) -> None:
    rollouts.run_episode(lambda _: hold_action(0.0), seed=5)
    cube_before = rollouts.world.cube_pose().position
    rollouts.reset(seed=6)
    state = rollouts.controller.backend.read_state()
    np.testing.assert_allclose(state.joint_positions, rollouts.arm.home_joints, atol=0.02)
    assert not np.allclose(rollouts.world.cube_pose().position, cube_before)


def test_policy_answer_of_the_wrong_size_is_an_error(rollouts: SimRollouts) -> None:
    with pytest.raises(ValueError, match="expected 7"):
        rollouts.run_episode(lambda _: np.zeros(3), seed=7)


def test_episode_round_trips(tmp_path: Path) -> None:
    path = save_episode(small_episode(succeeded=True), tmp_path / "episode_000003.npz")
    loaded = load_episode(path)
    assert loaded.succeeded and loaded.seed == 3 and loaded.view_names == ("wrist", "side")
    np.testing.assert_array_equal(loaded.views, small_episode().views)
    assert loaded.success.tolist() == [False, False, False, True]


def test_an_interrupted_write_leaves_no_episode_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", killed)
    with pytest.raises(KeyboardInterrupt):
        save_episode(small_episode(), tmp_path / "episode_000001.npz")
    assert list(tmp_path.iterdir()) == []


def test_episode_files_skip_temporary_files(tmp_path: Path) -> None:
    save_episode(small_episode(), tmp_path / "episode_000002.npz")
    (tmp_path / ".episode_000003.abc.tmp").write_bytes(b"half")
    (tmp_path / ".episode_000004.npz").write_bytes(b"half")
    assert [p.name for p in episode_files(tmp_path)] == ["episode_000002.npz"]


def test_a_malformed_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "episode_000009.npz"
    np.savez(bad, views=np.zeros((2, 1, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="not an episode file"):
        load_episode(bad)


def test_episodes_start_at_a_random_offset_from_home_as_the_supervisors_resets_do(
    rollouts: SimRollouts,
) -> None:
    def still(_: Observation) -> np.ndarray:
        return hold_action(0.0)

    config = rollouts.config
    try:
        rollouts.config = replace(config, max_steps=2, home_randomization=0.0)
        home = rollouts.run_episode(still, seed=1).proprio[0, :3]
        rollouts.config = replace(config, max_steps=2, home_randomization=0.03)
        starts = [rollouts.run_episode(still, seed=seed).proprio[0, :3] for seed in (1, 2, 1)]
    finally:
        rollouts.config = config
    # Within the box up to the reach tolerance and the arm's settling (up to 6 mm seen on a loaded
    # CI machine).
    settling = 0.01
    for start in starts:
        assert np.all(np.abs(start - home) <= 0.03 + settling), (start, home)
    assert np.linalg.norm(starts[0] - starts[1]) > 0.02 + settling  # seeds 1 and 2: offsets 4.4 cm apart
    assert np.linalg.norm(starts[0] - starts[2]) < settling  # the same seed, the same start
