from __future__ import annotations

import numpy as np
import pytest

from pld_ros.core.episode import Outcome, Phase, RunMode, Source
from pld_ros.core.observation import ACTION_DIM, PROPRIO_DIM
from pld_ros.learning.episode_assembler import (
    TICK_SLACK,
    Dropped,
    Ending,
    EpisodeAssembler,
    Tick,
)
from pld_ros.learning.episode_store import RecordedEpisode, buffer_for, learning_steps

VIEWS = ("wrist", "side")
K = 3


def tick(episode_id: int, step: int, mode: RunMode = RunMode.PROBE_TAKEOVER, xi: float = 0.5) -> Tick:
    """A tick whose arrays encode its step, probing for K steps then COMBINED."""
    takeover = mode is RunMode.PROBE_TAKEOVER and step >= K
    residual = np.full(ACTION_DIM, 0.25 if takeover else 0.0, np.float32)
    base = np.full(ACTION_DIM, step, np.float32)
    return Tick(
        episode_id=episode_id,
        step=step,
        views=np.full((len(VIEWS), 4, 5, 3), step % 256, np.uint8),
        proprio=np.full(PROPRIO_DIM, step, np.float32),
        base_action=base,
        executed_action=base + xi * residual,
        residual=residual,
        xi=xi,
        phase=Phase.TAKEOVER if takeover else Phase.PROBING,
        source=Source.COMBINED if takeover else Source.BASE,
        base_policy="onnx:sim",
        residual_version=3,
        wall_time=1000.0 + step,
    )


def ending(episode_id: int, outcome: Outcome, steps: int, mode: RunMode = RunMode.PROBE_TAKEOVER) -> Ending:
    return Ending(episode_id, outcome, mode, steps, run_id="franka_pick_cube-20260101T000000Z")


def feed(assembler: EpisodeAssembler, episode_id: int, steps: range, **kw: RunMode) -> list[object]:
    out: list[object] = []
    for step in steps:
        out += assembler.add(tick(episode_id, step, **kw), now=0.0)
    return out


def test_a_successful_episode_gets_reward_and_done_on_its_last_tick_only() -> None:
    assembler = EpisodeAssembler("fr3", VIEWS, max_episode_steps=20)
    assert feed(assembler, 4, range(8)) == []
    [episode] = assembler.end(ending(4, Outcome.SUCCESS, steps=8), now=0.0)
    assert isinstance(episode, RecordedEpisode)
    assert len(episode) == 8
    np.testing.assert_array_equal(episode.reward, [0.0] * 7 + [1.0])
    np.testing.assert_array_equal(episode.done, [False] * 7 + [True])
    np.testing.assert_array_equal(episode.base_action[:, 0], np.arange(8))
    np.testing.assert_array_equal(episode.views[:, 1, 0, 0, 0], np.arange(8))
    np.testing.assert_array_equal(episode.phase, [Phase.PROBING] * K + [Phase.TAKEOVER] * 5)
    np.testing.assert_array_equal(episode.residual[:K], 0.0)
    meta = episode.meta
    assert (meta.robot_id, meta.episode_id, meta.outcome, meta.mode) == (
        "fr3",
        4,
        Outcome.SUCCESS,
        RunMode.PROBE_TAKEOVER,
    )
    assert (meta.xi, meta.base_policy, meta.started_at) == (0.5, "onnx:sim", 1000.0)
    assert meta.residual_version == "3"
    assert meta.run_id == "franka_pick_cube-20260101T000000Z"
    # The store's rules then see a takeover episode with a terminal success.
    steps = learning_steps(episode)
    assert steps is not None and steps.terminal and buffer_for(episode) == "online"
    assert assembler.counts.assembled == 1 and assembler.open_episode is None


def test_a_failed_episode_has_no_reward_and_a_warmup_success_goes_offline() -> None:
    assembler = EpisodeAssembler("fr3", VIEWS, max_episode_steps=20)
    feed(assembler, 1, range(5))
    [failed] = assembler.end(ending(1, Outcome.FAILURE, steps=5), now=0.0)
    assert isinstance(failed, RecordedEpisode)
    assert not failed.reward.any() and failed.done[-1]
    feed(assembler, 2, range(6), mode=RunMode.BASE_ONLY)
    [warmup] = assembler.end(ending(2, Outcome.SUCCESS, steps=6, mode=RunMode.BASE_ONLY), now=0.0)
    assert isinstance(warmup, RecordedEpisode) and buffer_for(warmup) == "offline"


def test_ticks_past_the_supervisors_count_are_cut_whichever_arrives_first() -> None:
    assembler = EpisodeAssembler("fr3", VIEWS, max_episode_steps=20)
    # The residual answered one base action more before the ENDED event reached it.
    feed(assembler, 1, range(7))
    [early] = assembler.end(ending(1, Outcome.SUCCESS, steps=6), now=0.0)
    assert isinstance(early, RecordedEpisode) and len(early) == 6 and early.reward[-1] == 1.0
    # The ENDED event overtakes the last records: the episode waits for them, then cuts the extra.
    feed(assembler, 2, range(4))
    assert assembler.end(ending(2, Outcome.FAILURE, steps=6), now=10.0) == []
    assert assembler.add(tick(2, 4), now=10.1) == []
    [late] = assembler.add(tick(2, 5), now=10.2)
    assert isinstance(late, RecordedEpisode) and len(late) == 6
    assert assembler.add(tick(2, 6), now=10.3) == []  # late: that episode is stored already
    assert assembler.counts.after_end_ticks == 1 and assembler.counts.late_ticks == 1


def test_an_ended_episode_whose_last_ticks_never_come_is_assembled_after_the_grace_period() -> None:
    assembler = EpisodeAssembler("fr3", VIEWS, max_episode_steps=20, grace=1.0)
    feed(assembler, 3, range(4))
    assert assembler.end(ending(3, Outcome.ABORTED, steps=9, mode=RunMode.PROBE_TAKEOVER), now=5.0) == []
    assert assembler.poll(now=5.5) == []
    [episode] = assembler.poll(now=6.0)
    # Aborted episodes are stored; the store's rules give them no learning data.
    assert isinstance(episode, RecordedEpisode) and episode.meta.outcome is Outcome.ABORTED
    assert len(episode) == 4 and not episode.reward.any() and episode.done[-1]
    assert learning_steps(episode) is None


@pytest.mark.parametrize(
    ("steps", "reason"),
    [
        ([0, 1, 3, 4], "step(s) 2 missing"),
        ([2, 3, 4], "step(s) 0..1 missing"),
        ([0, 1, 2, 2, 3], "step 2 arrived again or out of order"),
    ],
    ids=["hole", "started-mid-episode", "repeated"],
)
def test_an_episode_with_a_hole_in_its_steps_is_reported_not_stored(steps: list[int], reason: str) -> None:
    assembler = EpisodeAssembler("fr3", VIEWS, max_episode_steps=20)
    for step in steps:
        assert assembler.add(tick(5, step), now=0.0) == []
    [dropped] = assembler.end(ending(5, Outcome.SUCCESS, steps=5), now=0.0)
    assert isinstance(dropped, Dropped)
    assert (dropped.episode_id, dropped.kind) == (5, "incomplete")
    assert reason in dropped.reason
    assert assembler.counts.incomplete == 1 and assembler.counts.assembled == 0


def test_memory_is_bounded_by_the_longest_possible_episode() -> None:
    assembler = EpisodeAssembler("fr3", VIEWS, max_episode_steps=10)
    feed(assembler, 1, range(10 + TICK_SLACK + 3))
    [dropped] = assembler.end(ending(1, Outcome.FAILURE, steps=40), now=0.0)
    assert isinstance(dropped, Dropped) and f"more than {10 + TICK_SLACK} ticks" in dropped.reason


def test_a_tick_of_a_new_episode_discards_the_unfinished_one_and_its_late_end_is_ignored() -> None:
    assembler = EpisodeAssembler("fr3", VIEWS, max_episode_steps=20)
    feed(assembler, 1, range(4))
    [discarded] = assembler.add(tick(2, 0), now=0.0)
    assert isinstance(discarded, Dropped) and discarded.kind == "unfinished"
    assert "episode 2" in discarded.reason and assembler.open_episode == 2
    assert assembler.end(ending(1, Outcome.SUCCESS, steps=4), now=0.0) == []
    assert assembler.open_episode == 2  # the new episode goes on
    feed(assembler, 2, range(1, 3))
    [episode] = assembler.end(ending(2, Outcome.FAILURE, steps=3), now=0.0)
    assert isinstance(episode, RecordedEpisode) and episode.meta.episode_id == 2
    assert assembler.counts.unfinished == 1


def test_events_without_ticks_and_repeated_events_yield_nothing() -> None:
    assembler = EpisodeAssembler("fr3", VIEWS, max_episode_steps=20)
    # Aborted during its reset (no tick), and the history a late subscriber receives again.
    assert assembler.end(ending(7, Outcome.ABORTED, steps=0), now=0.0) == []
    assert assembler.end(ending(7, Outcome.ABORTED, steps=0), now=0.0) == []
    assert assembler.counts.ended_without_ticks == 1


def test_data_the_episode_refuses_is_reported_as_invalid() -> None:
    assembler = EpisodeAssembler("fr3", VIEWS, max_episode_steps=20)
    feed(assembler, 1, range(6))  # COMBINED ticks from step K on
    [dropped] = assembler.end(ending(1, Outcome.SUCCESS, steps=6, mode=RunMode.BASE_ONLY), now=0.0)
    assert isinstance(dropped, Dropped) and dropped.kind == "invalid"
    assert "BASE_ONLY" in dropped.reason and assembler.counts.invalid == 1


def test_shutdown_assembles_an_ended_episode_and_drops_an_open_one() -> None:
    assembler = EpisodeAssembler("fr3", VIEWS, max_episode_steps=20)
    feed(assembler, 1, range(3))
    assembler.end(ending(1, Outcome.FAILURE, steps=5), now=0.0)
    [ended] = assembler.flush()
    assert isinstance(ended, RecordedEpisode) and len(ended) == 3
    feed(assembler, 2, range(3))
    [open_] = assembler.flush()
    assert isinstance(open_, Dropped) and open_.kind == "unfinished" and "shutdown" in open_.reason
    assert assembler.flush() == []
