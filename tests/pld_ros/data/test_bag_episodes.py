"""Bags to SFT episodes (real bags, written as the recorder writes them with real CDR; no ROS): one
frame per commanded tick with the state, base action and camera frames of that tick; the control
rate from the bag's metadata (or given, or assumed for old bags); episode windows from the events;
session bags; bags without events, topics or prompt; cut and damaged bags; an episode recorded by
the recorder's core (its pre-roll) whose first frame is the STARTED tick."""

from __future__ import annotations

import re
import struct
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from pld_ros.core.episode import Outcome, RunMode, Source
from pld_ros.data.bag_episodes import DEFAULT_FPS, BagEpisodes, episode_from_bag, episodes_from_bag
from pld_ros.data.bags import BagWarning, EpisodeMetadata
from pld_ros.data.recording import IMAGE_TYPE, BagRecorder, RecordedTopic
from pld_ros.data.sft_episode import Origin, SftEpisode
from tests.pld_ros.data.synthetic_bags import (
    CAMERAS,
    COMMAND,
    CONTROL_RATE,
    EVENTS,
    MS,
    PROFILE,
    PROMPT,
    RAW_SIZE,
    ROBOT,
    T0,
    TOPICS,
    Recording,
    Run,
    base_of,
    camera_topic,
    command_of,
    frame_stamp,
    graph_output,
    newest_frame,
    pattern,
    record,
    state_of,
    tick_stamp,
)
from tests.pld_ros.data.test_bags import chunk_records
from tests.pld_ros.data.test_lerobot_dataset import assert_frames_match
from tests.pld_ros.data.test_recording import Clock, Log

SESSION = (
    Run(1, ticks=10, probe_steps=3),
    Run(2, ticks=8, outcome=Outcome.FAILURE, mode=RunMode.BASE_ONLY),
    Run(3, ticks=9, probe_steps=2, human_from=6),
)


@pytest.fixture(autouse=True)
def no_unexpected_warnings() -> Iterator[None]:
    """A bag that reads cleanly warns of nothing; tests that expect warnings say so."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", BagWarning)
        yield


def assert_episode(
    episode: SftEpisode,
    run: Run,
    recording: Recording,
    steps: Sequence[int] | None = None,
    *,
    fps: float = 20.0,
    sizes: dict[str, tuple[int, int]] = CAMERAS,
    video: bool = False,
) -> None:
    """``episode`` holds ``steps`` (default: all) of ``run``, each frame the tick of its command;
    ``video``: camera frames within lossy video's tolerance, else exact."""
    ticks = recording.ticks[run.episode_id]
    steps = range(len(ticks)) if steps is None else steps
    ns = [ticks[step] for step in steps]
    assert len(episode) == len(ns)
    np.testing.assert_allclose(episode.state, np.stack([state_of(n) for n in ns]), atol=1e-6)
    commands = [command_of(run, step, n) for step, n in zip(steps, ns, strict=True)]
    np.testing.assert_array_equal(episode.action, np.stack([action for _, action in commands]))
    for t, (n, (source, action)) in enumerate(zip(ns, commands, strict=True)):
        if source is Source.BASE:  # the base policy acted alone: no residual at all
            assert not np.any(episode.residual[t]) and np.array_equal(episode.base_action[t], action)
        else:
            np.testing.assert_array_equal(episode.base_action[t], base_of(n))
            np.testing.assert_allclose(episode.residual[t], action - base_of(n), atol=1e-7)
    for camera, size in sizes.items():
        expected = np.stack([pattern(camera, newest_frame(camera, tick_stamp(n)), size) for n in ns])
        if video:
            assert_frames_match(episode.cameras[camera], expected)
        else:
            np.testing.assert_array_equal(episode.cameras[camera], expected)
    np.testing.assert_allclose(episode.timestamps, tick_stamp(ns[0]) * 1e-9 + np.arange(len(ns)) / fps)
    assert (episode.task, episode.info.robot_id, episode.info.episode_id) == (PROMPT, ROBOT, run.episode_id)


def test_an_episode_bag_has_one_frame_per_commanded_tick(tmp_path: Path) -> None:
    run = Run(7, ticks=14, probe_steps=5)
    (bag,), recording = record(tmp_path, [run])
    episode = episode_from_bag(bag)
    # Commands arrive 5 ms after their tick's state (some states after their command), cameras
    # (30 Hz) and ticks (20 Hz, with jitter) have phases of their own: each frame still holds its
    # own tick's state, command, base action and newest camera frames.
    assert_episode(episode, run, recording)
    assert list(episode.cameras) == sorted(CAMERAS)  # every recorded camera, by name
    assert episode.success and episode.info.origin is Origin.PLD
    assert episode.info.extra == {
        "bag": bag.name,
        "profile": PROFILE,
        "mode": "probe_takeover",
        "outcome": "success",
        "reason": "success",
        "probe_steps": "5",
        "steps": "0-13",
    }


def test_a_session_bag_gives_each_episode_between_its_events(tmp_path: Path) -> None:
    (bag,), recording = record(tmp_path, SESSION, split="session")
    episodes = episodes_from_bag(bag, cameras=["wrist", "side"])
    assert [e.info.episode_id for e in episodes] == [1, 2, 3]
    for episode, run in zip(episodes, SESSION, strict=True):
        assert_episode(episode, run, recording)
        assert list(episode.cameras) == ["wrist", "side"]
    assert [e.success for e in episodes] == [True, False, True]
    assert [e.info.origin for e in episodes] == [Origin.PLD, Origin.BASE, Origin.HUMAN]
    assert [e.info.extra["outcome"] for e in episodes] == ["success", "failure", "success"]
    assert "profile" in episodes[0].info.extra and "bag" in episodes[0].info.extra


def test_image_raw_fps_and_prompt_are_choices(tmp_path: Path) -> None:
    run = Run(4, ticks=6)
    (bag,), recording = record(tmp_path, [run], image_raw=True)
    with pytest.warns(BagWarning) as caught:
        episode = episode_from_bag(bag, fps=10, view="image_raw", prompt=PROMPT)
    notes = [str(w.message) for w in caught]
    assert notes[0].endswith("fps 10 given; the bag's metadata records a control rate of 20 Hz")
    mismatch = r"ticks came every 5\d\.\d ms on the bag's clock, fps 10 means 100\.0 ms"
    assert len(notes) == 2 and re.search(mismatch, notes[1])
    assert_episode(episode, run, recording, fps=10, sizes=dict.fromkeys(CAMERAS, RAW_SIZE))
    other = episode_from_bag(bag, prompt="stack the cubes", cameras=["side"])
    assert other.task == "stack the cubes" and list(other.cameras) == ["side"]


def test_the_rate_comes_from_the_metadata_and_old_bags_are_assumed_at_20_hz(tmp_path: Path) -> None:
    run = Run(8, ticks=6)
    (bag,), recording = record(tmp_path / "now", [run])
    reader = BagEpisodes(bag)
    assert (reader.fps, reader.fps_source) == (CONTROL_RATE, "metadata")
    assert_episode(episode_from_bag(bag), run, recording)
    # A bag whose metadata says 10 Hz: its frames are 0.1 s apart (and its 50 ms ticks reported).
    (slow,), _ = record(tmp_path / "slow", [run], control_rate=10.0)
    with pytest.warns(BagWarning, match="fps 10 means 100.0 ms"):
        episode = episode_from_bag(slow)
    assert_episode(episode, run, recording, fps=10.0)
    (old,), _ = record(tmp_path / "old", [run], control_rate=None)  # an older recorder's bag
    with pytest.warns(BagWarning, match="does not record the control rate .*: 20 Hz assumed") as caught:
        reader = BagEpisodes(old)
    assert (reader.fps, reader.fps_source, len(caught)) == (DEFAULT_FPS, "default", 1)
    (episode,) = list(reader)
    assert_episode(episode, run, recording)
    assert "20 Hz assumed" in episode.info.extra["problems"]  # the dataset keeps the note
    given = BagEpisodes(old, fps=20)  # given: nothing assumed, nothing to report
    assert (given.fps, given.fps_source, given.problems) == (20.0, "given", [])


def test_a_bag_without_events_is_read_whole_and_says_so(tmp_path: Path) -> None:
    run = Run(5, ticks=8, outcome=Outcome.SUCCESS)
    (bag,), recording = record(tmp_path, [run], drop={EVENTS})
    with pytest.warns(BagWarning, match="no episode events in the bag: the whole bag is read"):
        episode = episode_from_bag(bag)
    assert_episode(episode, run, recording)
    assert episode.success and episode.info.extra["outcome"] == "success"  # from the bag's metadata
    assert "no episode events" in episode.info.extra["problems"]


def test_missing_topics_and_prompt_are_named_with_the_bag(tmp_path: Path) -> None:
    (bag,), _ = record(tmp_path / "a", [Run(1)], drop={COMMAND, camera_topic("wrist")})
    with pytest.raises(ValueError, match="missing topic") as error:
        BagEpisodes(bag, cameras=["wrist", "side"])
    missing, has = str(error.value).split("; the bag has: ")
    assert missing.startswith(f"{bag}: missing topic(s) ")
    assert f"{COMMAND} (pld_msgs/msg/DeltaPoseCommand)" in missing and camera_topic("wrist") in missing
    assert camera_topic("side") not in missing and camera_topic("side") in has
    with pytest.raises(ValueError, match=r"missing topic\(s\) .*/rig/cameras/<name>/image_raw \(sensor_msgs"):
        BagEpisodes(bag, view="image_raw")
    (bag,), _ = record(tmp_path / "b", [Run(1)], prompt="")
    with pytest.raises(ValueError, match=f"{bag}: no prompt in the bag's metadata"):
        BagEpisodes(bag)
    assert len(episodes_from_bag(bag, prompt=PROMPT)) == 1
    with pytest.raises(ValueError, match="holds 3 episodes"):
        episode_from_bag(record(tmp_path / "c", SESSION, split="session")[0][0])


def test_a_truncated_bag_converts_its_readable_part(tmp_path: Path) -> None:
    run = Run(9, ticks=16)
    # One message per chunk, as a slowly written bag has: a cut loses only what follows it.
    (bag,), recording = record(tmp_path, [run], chunk_period=1e-9)
    mcap = bag / f"{bag.name}.mcap"
    data = mcap.read_bytes()
    mcap.write_bytes(data[: len(data) * 6 // 10])  # a recorder killed in mid-episode
    with pytest.warns(BagWarning) as caught:
        episode = episode_from_bag(bag)
    assert 4 <= len(episode) < run.ticks
    assert_episode(episode, run, recording, range(len(episode)))
    assert not episode.success and "outcome" not in episode.info.extra  # its end was not recorded
    messages = [str(w.message) for w in caught]
    assert any("the file ends inside" in m for m in messages)
    assert any("no ENDED event in the bag: outcome unknown" in m for m in messages)
    assert "the file ends inside" in episode.info.extra["problems"]


def test_a_damaged_chunk_cuts_the_episode_where_ticks_are_lost(tmp_path: Path) -> None:
    run = Run(3, ticks=12)
    (bag,), recording = record(tmp_path, [run], chunk_period=1e-9)
    mcap = bag / f"{bag.name}.mcap"
    data = bytearray(mcap.read_bytes())
    # The chunk holding step 5's command (received 5 ms after its tick) gets an unknown compression.
    lost = tick_stamp(recording.ticks[run.episode_id][5]) + 5 * MS
    (offset,) = [o for o, _ in chunk_records(bytes(data)) if struct.unpack_from("<Q", data, o)[0] == lost]
    compression = offset + 32  # after start, end, size (u64 each), CRC (u32) and the name's length
    assert data[compression : compression + 4] == b"zstd"
    data[compression : compression + 4] = b"zsxd"
    mcap.write_bytes(bytes(data))
    with pytest.warns(BagWarning) as caught:
        first, second = episodes_from_bag(bag)
    assert_episode(first, run, recording, range(5))
    assert_episode(second, run, recording, range(6, 12))
    assert (first.success, second.success) == (False, True)  # only the piece that reached the end
    assert (first.info.extra["piece"], second.info.extra["steps"]) == ("1/2", "6-11")
    messages = "\n".join(str(w.message) for w in caught)
    assert "unsupported chunk compression 'zsxd'" in messages
    assert "episode 3: ticks are missing in between, cut into 2 pieces (steps 0-4, 6-11)" in messages


def test_a_stale_camera_frame_leaves_its_tick_out(tmp_path: Path) -> None:
    run = Run(2, ticks=10)
    (bag,), recording = record(tmp_path, [run])
    reader = BagEpisodes(bag, max_camera_age=0.02)  # many 30 Hz frames are older than 20 ms at a tick
    with pytest.warns(BagWarning) as caught:
        episodes = list(reader)
    stale = r"episode 2: \d+ tick\(s\) left out: the newest frame of /rig/cameras/\w+/policy_view older"
    assert any(re.search(stale, str(w.message)) for w in caught)
    ticks = recording.ticks[run.episode_id]

    def fresh(n: int) -> bool:
        stamp = tick_stamp(n)
        return all(stamp - frame_stamp(c, newest_frame(c, stamp)) <= 20 * MS for c in CAMERAS)

    kept = [step for step, n in enumerate(ticks) if fresh(n)]
    pieces = np.split(np.array(kept), np.flatnonzero(np.diff(kept) != 1) + 1)
    assert 1 < len(pieces) == len(episodes) and len(kept) < len(ticks)
    for episode, steps in zip(episodes, pieces, strict=True):
        assert_episode(episode, run, recording, [int(step) for step in steps])
    with pytest.raises(RuntimeError, match="read already"):
        list(reader)


def recorded_by_the_recorder(directory: Path, runs: Sequence[Run], preroll_age: float) -> list[Path]:
    """The bags the recorder's core (:class:`BagRecorder`, its writer thread) leaves for what the graph
    published during ``runs``, given as it arrived, with the recorder's clock following it."""
    recording = graph_output(runs)
    identity = EpisodeMetadata(robot_id=ROBOT, profile=PROFILE, prompt=PROMPT, control_rate=CONTROL_RATE)
    clock = Clock()
    recorder = BagRecorder(
        directory,
        identity,
        Log(),
        events_topic=EVENTS,
        preroll_age=preroll_age,
        not_before_ns=T0,
        clock=clock,
    )
    for topic, msgtype in {**TOPICS, **{camera_topic(c): IMAGE_TYPE for c in CAMERAS}}.items():
        recorder.add_topic(RecordedTopic(topic, msgtype))
    recorder.start()
    for topic, stamp, data in recording.messages:
        clock.now = stamp
        recorder.put(topic, stamp, data)
    assert recorder.stop()
    return sorted(directory.iterdir())


def test_an_episode_recorded_from_its_started_tick_has_that_tick_s_images(tmp_path: Path) -> None:
    """The STARTED tick is commanded (its base action reached the residual node after the event), but
    its camera frames (and the second episode's state) were received before the event: the recorder's
    pre-roll puts them into the bag, so the first frame is whole."""
    runs = [Run(1, ticks=11, command_started_tick=True), Run(2, ticks=9, command_started_tick=True)]
    recording = graph_output(runs)
    for run in runs:
        started, first = recording.spans[run.episode_id][0], recording.ticks[run.episode_id][0]
        for camera in CAMERAS:  # received 4 ms after capture: before the STARTED event
            assert frame_stamp(camera, newest_frame(camera, tick_stamp(first))) + 4 * MS < started
    assert tick_stamp(recording.ticks[2][0]) + 1 * MS < recording.spans[2][0]  # episode 2's first state
    bags = recorded_by_the_recorder(tmp_path / "preroll", runs, preroll_age=1.0)
    for bag, run in zip(bags, runs, strict=True):
        episode = episode_from_bag(bag)  # no warning: nothing is missing
        assert_episode(episode, run, recording)  # every tick, from step 0, with its own images
        assert episode.info.extra["steps"] == f"0-{run.ticks - 1}"
    # Without the pre-roll (a message of any age is too old) the first tick is lost: episode 1's for
    # its camera frames (its state was held up past the event), episode 2's for its state first.
    bags = recorded_by_the_recorder(tmp_path / "none", runs, preroll_age=0.0)
    for bag, run, lost in zip(
        bags, runs, ("no frame of /rig/cameras/", "no readable arm state"), strict=True
    ):
        with pytest.warns(BagWarning) as caught:
            episode = episode_from_bag(bag)
        assert_episode(episode, run, recording, range(1, run.ticks))
        notes = "\n".join(str(w.message) for w in caught)
        assert f"episode {run.episode_id}: 1 tick(s) left out: {lost}" in notes
