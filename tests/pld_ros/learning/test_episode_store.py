from __future__ import annotations

import os
import random
import signal
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pld_ros.core.episode import Outcome, Phase, RunMode, Source
from pld_ros.learning.episode_store import (
    EpisodeFileError,
    EpisodeMeta,
    EpisodeStore,
    RecordedEpisode,
    buffer_for,
    learning_steps,
    load_episode,
    save_episode,
)
from tests.processes import Watched

REPO = Path(__file__).resolve().parents[3]


def recorded_episode(
    episode_id: int = 1,
    *,
    ticks: int = 8,
    mode: RunMode = RunMode.PROBE_TAKEOVER,
    outcome: Outcome = Outcome.SUCCESS,
    probe_steps: int = 3,
    human_from: int | None = None,
    views: int = 2,
    size: int = 8,
) -> RecordedEpisode:
    """An episode as the graph records it: the base policy for ``probe_steps`` ticks, then
    COMBINED, the recorded phase one tick late (the supervisor announces the takeover when it sees
    the first COMBINED command). ``proprio[t] = [t, episode_id, ...]`` identifies each tick."""
    rng = np.random.default_rng(episode_id)
    tick = np.arange(ticks)
    combined = (tick >= probe_steps) & (mode is not RunMode.BASE_ONLY)
    source = np.where(combined, Source.COMBINED, Source.BASE).astype(np.uint8)
    if human_from is not None:
        source[human_from:] = Source.HUMAN
        combined &= tick < human_from
    phase = np.where(
        (tick >= probe_steps + 1) & (mode is not RunMode.BASE_ONLY), Phase.TAKEOVER, Phase.PROBING
    )
    residual = np.where(combined[:, None], rng.uniform(-1.0, 1.0, (ticks, 7)), 0.0).astype(np.float32)
    base = rng.normal(0.0, 0.01, (ticks, 7)).astype(np.float32)
    proprio = rng.normal(size=(ticks, 8)).astype(np.float32)
    proprio[:, 0] = tick
    proprio[:, 1] = episode_id
    reward = np.zeros(ticks, dtype=np.float32)
    reward[-1] = 1.0 if outcome is Outcome.SUCCESS else 0.0
    done = np.zeros(ticks, dtype=bool)
    done[-1] = True
    return RecordedEpisode(
        meta=EpisodeMeta(
            robot_id="fr3_left",
            episode_id=episode_id,
            run_id="franka_pick_cube-20250101T000000Z",
            outcome=outcome,
            mode=mode,
            xi=0.5,
            base_policy="onnx: bc_policy.onnx",
            residual_version="7",
            started_at=1.75e9 + episode_id,
        ),
        view_names=("wrist", "side")[:views],
        views=rng.integers(0, 256, (ticks, views, size, size, 3), dtype=np.uint8),
        proprio=proprio,
        base_action=base,
        executed_action=(base + 0.05 * residual).astype(np.float32),
        residual=residual,
        reward=reward,
        done=done,
        phase=phase.astype(np.uint8),
        source=source,
    )


def assert_same(loaded: RecordedEpisode, episode: RecordedEpisode) -> None:
    assert loaded.meta == episode.meta
    assert loaded.view_names == episode.view_names
    for name, array in episode.arrays().items():
        stored = loaded.arrays()[name]
        assert stored.dtype == array.dtype, name
        np.testing.assert_array_equal(stored, array, err_msg=name)


def test_an_episode_round_trips_with_every_array_and_its_metadata(tmp_path: Path) -> None:
    episode = recorded_episode(5, outcome=Outcome.FAILURE, human_from=6)
    with EpisodeStore(tmp_path) as store:
        path = store.write(episode)
        assert path.name == "fr3_left-0000000005.npz"
        assert_same(store.load(path), episode)
        assert [p.name for p in store.paths()] == [path.name]
    with np.load(path, allow_pickle=False) as data:  # no pickled member anywhere
        assert "meta" in data.files


def test_inconsistent_episodes_are_refused_on_construction() -> None:
    good = recorded_episode()
    ticks = len(good)
    with pytest.raises(ValueError, match="views"):
        replace(good, view_names=("wrist",))
    with pytest.raises(ValueError, match="proprio"):
        replace(good, proprio=good.proprio.astype(np.float64))
    with pytest.raises(ValueError, match="base_action"):
        replace(good, base_action=good.base_action[:, :6])
    reward = good.reward.copy()
    reward[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        replace(good, reward=reward)
    with pytest.raises(ValueError, match="done"):
        replace(good, done=np.ones(ticks, dtype=bool))
    with pytest.raises(ValueError, match="source: unknown"):
        replace(good, source=np.full(ticks, 9, dtype=np.uint8))
    with pytest.raises(ValueError, match="not COMBINED"):
        replace(good, source=np.full(ticks, Source.BASE, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        replace(good, residual=good.residual * 3.0)
    with pytest.raises(ValueError, match="BASE_ONLY"):
        replace(good, meta=replace(good.meta, mode=RunMode.BASE_ONLY))
    with pytest.raises(ValueError, match="robot_id"):
        replace(good.meta, robot_id="../elsewhere")
    with pytest.raises(ValueError, match="ended"):
        replace(good.meta, outcome=Outcome.NONE)


WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from pld_ros.learning.episode_store import EpisodeStore
from tests.pld_ros.learning.test_episode_store import recorded_episode
with EpisodeStore(Path(sys.argv[1])) as store:
    episode_id = max((int(p.stem.rsplit("-", 1)[1]) for p in store.paths()), default=0) + 1
    while True:
        episode = recorded_episode(episode_id, ticks=40, size=64)
        print("writing", episode_id, flush=True)
        store.write(episode)
        print("wrote", episode_id, flush=True)
        episode_id += 1
"""


def test_a_writer_killed_at_random_moments_leaves_only_complete_episodes(tmp_path: Path) -> None:
    chance = random.Random(5)
    killed_mid_write = 0
    written: set[int] = set()
    for round_ in range(6):
        writer = Watched([sys.executable, "-c", WRITER, str(tmp_path), str(REPO)])
        try:
            writer.wait_for(rf"writing {len(written) + chance.randint(1, 3)}$")
            # The first round dies in its write; the others at any moment of the loop.
            time.sleep(0.0 if round_ == 0 else chance.uniform(0.0, 0.15))
        finally:
            os.kill(writer.process.pid, signal.SIGKILL)
            writer.wait_exit(10.0)
        assert writer.process.returncode == -signal.SIGKILL
        written |= {int(line.split()[1]) for line in writer.lines if line.startswith("wrote ")}
        killed_mid_write += any(p.name.endswith(".tmp") for p in tmp_path.iterdir())

        reader = EpisodeStore(tmp_path, writable=False)
        stored = list(reader.episodes())
        assert reader.problems == {}
        ids = [episode.meta.episode_id for episode in stored]
        # Every completed write is there, nothing else but whole episodes, no gap in the ids.
        assert ids == list(range(1, len(ids) + 1)) and written <= set(ids)
        for episode in stored:
            assert len(episode) == 40 and episode.views.shape == (40, 2, 64, 64, 3)
            np.testing.assert_array_equal(episode.proprio[:, 1], episode.meta.episode_id)
            assert_same(episode, recorded_episode(episode.meta.episode_id, ticks=40, size=64))
        written = set(ids)
    assert killed_mid_write >= 1, "no kill landed during a write: the test proved nothing"
    leftovers = [p for p in sorted(tmp_path.iterdir()) if p.name.endswith(".tmp")]
    with EpisodeStore(tmp_path) as store:
        assert store.removed_temporaries == leftovers
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_damaged_or_foreign_file_is_reported_and_the_others_still_load(tmp_path: Path) -> None:
    with EpisodeStore(tmp_path) as store:
        paths = [store.write(recorded_episode(i)) for i in (1, 2, 3, 4)]
    truncated, flipped = paths[1], paths[2]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    data = bytearray(flipped.read_bytes())
    views = zipfile.ZipFile(flipped).getinfo("views.npy")
    middle = views.header_offset + 30 + len(views.filename) + views.compress_size // 2
    data[middle] ^= 0xFF  # one damaged byte in the compressed views: CRC-32 or deflate catches it
    flipped.write_bytes(bytes(data))
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    np.savez(tmp_path / "foreign.npz", actions=np.zeros(3))

    store = EpisodeStore(tmp_path, writable=False)
    assert [e.meta.episode_id for e in store.episodes()] == [1, 4]
    assert set(store.problems) == {
        truncated,
        flipped,
        tmp_path / "empty.npz",
        tmp_path / "garbage.npz",
        tmp_path / "foreign.npz",
    }
    with pytest.raises(EpisodeFileError, match=r"foreign\.npz"):
        load_episode(tmp_path / "foreign.npz")


def test_a_second_writer_is_refused_and_a_reader_neither_cleans_nor_writes(tmp_path: Path) -> None:
    leftover = tmp_path / ".fr3_left-0000000009.npz.abc123.tmp"
    tmp_path.mkdir(exist_ok=True)
    leftover.write_bytes(b"half an episode")
    reader = EpisodeStore(tmp_path, writable=False)
    assert leftover.exists() and reader.paths() == []
    with pytest.raises(RuntimeError, match="read-only"):
        reader.write(recorded_episode())
    with EpisodeStore(tmp_path) as writer:
        assert writer.removed_temporaries == [leftover] and not leftover.exists()
        with pytest.raises(RuntimeError, match="another episode store"):
            EpisodeStore(tmp_path)
    with EpisodeStore(tmp_path) as again:  # closing released the lock
        again.write(recorded_episode())


def test_an_episode_is_never_stored_twice(tmp_path: Path) -> None:
    with EpisodeStore(tmp_path) as store:
        path = store.write(recorded_episode(3))
        with pytest.raises(FileExistsError):
            store.write(recorded_episode(3, outcome=Outcome.FAILURE))
        assert store.load(path).meta.outcome is Outcome.SUCCESS


def test_save_and_load_work_on_any_path(tmp_path: Path) -> None:
    episode = recorded_episode(views=0)
    assert_same(load_episode(save_episode(episode, tmp_path / "sub" / "one.npz")), episode)
    steps = learning_steps(episode)
    assert steps is not None and steps.images is None


# ---- learning data --------------------------------------------------------------------------


def test_probing_steps_are_dropped_and_learning_starts_at_the_takeover() -> None:
    episode = recorded_episode(ticks=8, probe_steps=3)
    steps = learning_steps(episode)
    assert steps is not None
    # Takeover at tick 3 (first COMBINED, the phase says so only at tick 4): ticks 3..7 are the
    # observations, 3..6 the actions, rewards of arriving at 4..7.
    np.testing.assert_array_equal(steps.state[:, 0], [3, 4, 5, 6, 7])
    assert steps.state.dtype == np.float32
    np.testing.assert_array_equal(steps.base_action, episode.base_action[3:])
    np.testing.assert_array_equal(steps.residual, episode.residual[3:7])
    np.testing.assert_array_equal(steps.reward, episode.reward[4:])
    assert steps.images is not None
    np.testing.assert_array_equal(steps.images, episode.views[3:])
    assert steps.terminal and steps.success


def test_a_step_limit_failure_is_not_terminal() -> None:
    steps = learning_steps(recorded_episode(outcome=Outcome.FAILURE))
    assert steps is not None and not steps.terminal and len(steps) == 4


def test_a_warmup_episode_contributes_every_step_with_zero_residual() -> None:
    episode = recorded_episode(ticks=6, mode=RunMode.BASE_ONLY)
    steps = learning_steps(episode)
    assert steps is not None and len(steps) == 5 and steps.terminal
    np.testing.assert_array_equal(steps.state[:, 0], np.arange(6))
    assert not np.any(steps.residual)


def test_an_aborted_episode_contributes_nothing() -> None:
    assert learning_steps(recorded_episode(outcome=Outcome.ABORTED)) is None
    assert learning_steps(recorded_episode(outcome=Outcome.ABORTED, mode=RunMode.BASE_ONLY)) is None


def test_a_human_takeover_ends_the_learning_data_without_a_terminal() -> None:
    steps = learning_steps(recorded_episode(ticks=10, probe_steps=2, human_from=6))
    assert steps is not None and not steps.terminal
    # Residual actions 2..5; the observation where the human took over (6) is the last one.
    np.testing.assert_array_equal(steps.state[:, 0], [2, 3, 4, 5, 6])
    # A human on the last tick only: that action is no transition, the episode is whole.
    whole = learning_steps(recorded_episode(ticks=10, probe_steps=2, human_from=9))
    assert whole is not None and whole.terminal and len(whole) == 7


def test_an_episode_that_ends_before_its_takeover_has_no_learning_data() -> None:
    assert learning_steps(recorded_episode(ticks=5, probe_steps=5)) is None
    assert learning_steps(recorded_episode(ticks=5, probe_steps=4)) is None  # no transition after it
    assert learning_steps(recorded_episode(ticks=10, probe_steps=2, human_from=2)) is None


def test_successful_warmup_episodes_go_offline_and_the_rest_online() -> None:
    assert buffer_for(recorded_episode(mode=RunMode.BASE_ONLY)) == "offline"
    assert buffer_for(recorded_episode(mode=RunMode.BASE_ONLY, outcome=Outcome.FAILURE)) == "online"
    assert buffer_for(recorded_episode(mode=RunMode.BASE_ONLY, human_from=4)) == "online"
    assert buffer_for(recorded_episode()) == "online"
    assert buffer_for(recorded_episode(mode=RunMode.RESIDUAL_ONLY, probe_steps=0)) == "online"
    assert buffer_for(recorded_episode(outcome=Outcome.FAILURE)) == "online"
    assert buffer_for(recorded_episode(mode=RunMode.BASE_ONLY, outcome=Outcome.ABORTED)) is None
    assert buffer_for(recorded_episode(ticks=5, probe_steps=5)) is None
