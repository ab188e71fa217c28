"""The SFT episode type, stream alignment onto the control-rate grid, and the converters from the
replay buffer's and the simulated rollouts' episodes."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pld_ros.core.episode import Outcome, Phase, RunMode, Source
from pld_ros.data.sft_episode import (
    ACTION_NAMES,
    STATE_NAMES,
    EpisodeRejected,
    Layout,
    Origin,
    Stream,
    from_recorded_episode,
    from_rollout,
    resample,
)
from pld_ros.learning.episode_store import EpisodeMeta, RecordedEpisode
from pld_ros.training.rollouts import Episode
from tests.pld_ros.data.synthetic import FPS, episode

# ---- the episode type ------------------------------------------------------------------------


def test_a_consistent_episode_is_accepted() -> None:
    built = episode(0, frames_count=9)
    assert len(built) == 9
    assert np.allclose(built.base_action + built.residual, built.action)
    assert Layout.of(built).cameras == (("wrist", 64, 64), ("side", 48, 80))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: {"state": e.state[:-1]}, "state: expected float32 (12, N)"),
        (lambda e: {"action": e.action[:-1]}, "action: expected float32 (12, N)"),
        (
            lambda e: {"cameras": {"wrist": e.cameras["wrist"][:-1]}},
            "camera wrist: expected uint8 (12, H, W, 3)",
        ),
        (lambda e: {"timestamps": e.timestamps[:-1]}, "state: expected float32 (11, N)"),
        (
            lambda e: {"residual": np.where(np.arange(12)[:, None] == 5, e.residual + 0.01, e.residual)},
            "base_action + residual differs from action at frame 5",
        ),
        (lambda e: {"timestamps": e.timestamps[::-1].copy()}, "strictly increasing"),
        (lambda e: {"action": e.action.astype(np.float64)}, "action: expected float32"),
        (lambda e: {"cameras": {"wrist/left": e.cameras["wrist"]}}, "camera name 'wrist/left'"),
        (lambda e: {"task": "  "}, "task"),
        (lambda e: {"state_names": ("x",)}, "state_names: 1 names for 8 values"),
    ],
)
def test_an_inconsistent_episode_is_refused_with_the_field_named(change: object, message: str) -> None:
    good = episode(0, frames_count=12)
    with pytest.raises(ValueError, match=re.escape(message)):
        replace(good, **change(good))  # type: ignore[operator]


def test_check_rate_takes_jitter_and_refuses_a_missed_tick() -> None:
    built = episode(0, frames_count=10)
    jitter = np.random.default_rng(0).uniform(-0.01, 0.01, 10)  # +-10 ms at 50 ms ticks
    replace(built, timestamps=built.timestamps + jitter).check_rate(FPS)
    missed = built.timestamps.copy()
    missed[6:] += 1.0 / FPS  # tick 6 came one period late
    late = "frame 6 is 100.0 ms after frame 5, expected 50.0 ms at 20 fps"
    with pytest.raises(EpisodeRejected, match=re.escape(late)):
        replace(built, timestamps=missed).check_rate(FPS)
    with pytest.raises(EpisodeRejected, match=re.escape("expected 100.0 ms at 10 fps")):
        built.check_rate(10)


def test_layout_names_the_first_difference() -> None:
    layout = Layout.of(episode(0))
    layout.check(episode(1))
    with pytest.raises(EpisodeRejected, match="cameras"):
        layout.check(episode(1, cameras={"wrist": (64, 64)}))
    with pytest.raises(EpisodeRejected, match="cameras"):
        layout.check(episode(1, cameras={"wrist": (64, 64), "side": (48, 64)}))


# ---- resampling ------------------------------------------------------------------------------


def newest_at_or_before(times: np.ndarray, t: float) -> int:
    """Brute force: index of the last sample stamped at or before t, -1 if none."""
    earlier = [i for i, stamp in enumerate(times) if stamp <= t]
    return earlier[-1] if earlier else -1


def test_resample_takes_the_newest_sample_at_or_before_each_tick_and_never_a_later_one() -> None:
    # A camera at 30 Hz starting 7 ms after the state, which runs at 20 Hz (the control rate).
    camera_times = 10.007 + np.arange(45) / 30.0
    state_times = 10.0 + np.arange(30) / 20.0
    streams = {
        "camera": Stream(camera_times, np.arange(45)),
        "state": Stream(state_times, np.arange(30) * 10),
    }
    result = resample(streams, 20.0)
    # The first tick (10.000) has no camera frame yet: left out and reported.
    assert result.skipped_times == [10.0]
    assert result.missing[0].stream == "camera" and result.missing[0].reason == "no sample yet"
    assert np.allclose(result.timestamps, 10.0 + np.arange(1, 30) / 20.0)
    for k, t in enumerate(result.timestamps):
        assert result.values["camera"][k] == newest_at_or_before(camera_times, t)
        assert result.values["state"][k] == 10 * newest_at_or_before(state_times, t)
    for name in streams:
        assert np.all(result.sample_times[name] <= result.timestamps)
    # e.g. tick 10.05: camera frames at 10.007 and 10.0403; 10.0403 is the newest before it.
    assert result.values["camera"][0] == 1


def test_a_sample_stamped_just_after_a_tick_waits_for_the_next_tick() -> None:
    times = np.array([0.0, 0.05 + 1e-6, 0.1])
    result = resample({"s": Stream(times, np.array([0, 1, 2]))}, 20.0)
    assert result.values["s"].tolist() == [0, 0, 2]
    exactly = resample({"s": Stream(np.array([0.0, 0.05, 0.1]), np.array([0, 1, 2]))}, 20.0)
    assert exactly.values["s"].tolist() == [0, 1, 2]


def test_a_stalled_stream_leaves_its_ticks_out_with_max_age() -> None:
    camera = np.concatenate([np.arange(0.0, 0.5, 1 / 30), np.arange(1.0, 1.5, 1 / 30)])  # 0.5 s gap
    state = np.arange(0.0, 1.5, 1 / 20)
    streams = {"camera": Stream(camera, camera), "state": Stream(state, state)}
    held = resample(streams, 20.0)
    assert held.missing == ()  # without max_age the last frame is held through the gap
    result = resample(streams, 20.0, max_age=0.1)
    skipped = np.array(result.skipped_times)
    assert len(skipped) > 0 and np.all((skipped > 0.55) & (skipped < 1.0))
    assert all(m.stream == "camera" and "ms old (max_age 100.0 ms)" in m.reason for m in result.missing)
    assert np.all(result.timestamps[:, None] - result.sample_times["camera"][:, None] <= 0.1)


def test_resample_refuses_bad_streams() -> None:
    with pytest.raises(ValueError, match="time order"):
        Stream(np.array([0.0, 0.2, 0.1]), np.zeros(3))
    with pytest.raises(ValueError, match="3 values for 2 timestamps"):
        Stream(np.array([0.0, 0.1]), np.zeros(3))
    with pytest.raises(ValueError, match="streams without samples: camera"):
        resample({"camera": Stream(np.zeros(0), np.zeros(0))}, 20.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 2.0), min_size=1, max_size=40),
    st.lists(st.floats(0.0, 2.0), min_size=1, max_size=40),
    st.sampled_from([10.0, 20.0, 30.0]),
    st.floats(-0.5, 0.5),
)
def test_resample_matches_brute_force(a: list[float], b: list[float], fps: float, start: float) -> None:
    times = {"a": np.sort(np.array(a)), "b": np.sort(np.array(b))}
    streams = {name: Stream(t, np.arange(len(t))) for name, t in times.items()}
    result = resample(streams, fps, start=start, stop=2.0)
    grid = start + np.arange(int(np.floor((2.0 - start) * fps + 1e-9)) + 1) / fps
    kept = [t for t in grid if all(newest_at_or_before(times[n], t) >= 0 for n in times)]
    assert np.allclose(result.timestamps, kept)
    for k, t in enumerate(result.timestamps):
        for name in times:
            assert result.values[name][k] == newest_at_or_before(times[name], t)
    assert len(result.skipped_times) == len(grid) - len(kept)


# ---- converters ------------------------------------------------------------------------------


def recorded(mode: RunMode, outcome: Outcome, ticks: int = 10) -> RecordedEpisode:
    rng = np.random.default_rng(1)
    source = np.full(ticks, Source.BASE, dtype=np.uint8)
    residual = np.zeros((ticks, 7), dtype=np.float32)
    if mode is not RunMode.BASE_ONLY:
        source[4:] = Source.COMBINED
        residual[4:] = rng.uniform(-1, 1, (ticks - 4, 7))
    base = rng.normal(0, 0.01, (ticks, 7)).astype(np.float32)
    done = np.zeros(ticks, dtype=bool)
    done[-1] = True
    return RecordedEpisode(
        meta=EpisodeMeta("fr3_left", 42, "run-1", outcome, mode, 0.5, "onnx: bc.onnx", "7", 1000.0),
        view_names=("wrist", "side"),
        views=rng.integers(0, 256, (ticks, 2, 8, 8, 3), dtype=np.uint8),
        proprio=rng.normal(size=(ticks, 8)).astype(np.float32),
        base_action=base,
        executed_action=(base + 0.5 * 0.01 * residual).astype(np.float32),
        residual=residual,
        reward=np.zeros(ticks, dtype=np.float32),
        done=done,
        phase=np.full(ticks, Phase.PROBING, dtype=np.uint8),
        source=source,
    )


def test_a_recorded_episode_becomes_sft_data_with_the_residual_in_action_space() -> None:
    source = recorded(RunMode.PROBE_TAKEOVER, Outcome.SUCCESS)
    converted = from_recorded_episode(source, task="pick up the cube", control_rate=20.0)
    assert converted.success and converted.info.origin is Origin.PLD
    assert converted.info.robot_id == "fr3_left" and converted.info.episode_id == 42
    assert converted.info.extra["run_id"] == "run-1" and converted.info.extra["residual_version"] == "7"
    assert np.array_equal(converted.cameras["side"], source.views[:, 1])
    assert np.array_equal(converted.action, source.executed_action)
    assert np.array_equal(converted.base_action, source.base_action)
    assert np.allclose(converted.residual, source.executed_action - source.base_action)
    assert np.all(converted.residual[:4] == 0.0) and np.any(converted.residual[4:] != 0.0)
    assert np.allclose(converted.timestamps, 1000.0 + np.arange(10) / 20.0)
    assert converted.state_names == STATE_NAMES and converted.action_names == ACTION_NAMES
    warmup = from_recorded_episode(recorded(RunMode.BASE_ONLY, Outcome.FAILURE), task="t", control_rate=20.0)
    assert not warmup.success and warmup.info.origin is Origin.BASE
    assert np.all(warmup.residual == 0.0)


def test_a_rollout_becomes_sft_data_without_a_residual() -> None:
    steps = 6
    rollout = Episode(
        views=np.random.default_rng(0).integers(0, 256, (steps, 2, 8, 8, 3), dtype=np.uint8),
        proprio=np.zeros((steps, 8), dtype=np.float32),
        actions=np.linspace(0, 1, steps * 7, dtype=np.float32).reshape(steps, 7),
        success=np.arange(steps) >= steps - 3,
        view_names=("side", "wrist"),
        seed=3,
        succeeded=True,
    )
    converted = from_rollout(
        rollout, task="t", control_rate=20.0, origin=Origin.EXPERT, robot_id="sim", episode_id=3
    )
    assert converted.success and converted.info.origin is Origin.EXPERT
    assert np.array_equal(converted.base_action, rollout.actions) and np.all(converted.residual == 0.0)
    assert np.array_equal(converted.cameras["wrist"], rollout.views[:, 1])
    assert converted.info.extra == {"seed": "3", "fault": ""}
    cut = from_rollout(
        replace(rollout, fault="robot error"),
        task="t",
        control_rate=20.0,
        origin=Origin.BASE,
        robot_id="sim",
        episode_id=4,
    )
    assert not cut.success  # a robot error says nothing about the policy: never a success
