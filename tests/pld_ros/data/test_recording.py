"""The recorder's core without ROS: episode events split the stream into one complete bag per
episode with its metadata; the pre-roll of camera frames and base actions from between episodes;
session bags; history events; queue overflow; a failing disk."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pld_ros.core.episode import EventKind, Outcome, Phase, RunMode
from pld_ros.data.bags import EPISODE_META_TOPIC, BagReader, EpisodeMetadata, bag_info, typestore
from pld_ros.data.recording import (
    BASE_ACTION_TYPE,
    EVENT_TYPE,
    IMAGE_TYPE,
    WEIGHTS_TYPE,
    BagRecorder,
    RecordedTopic,
    default_topics,
)
from pld_ros.profile import load_profile
from tests.pld_ros.data.test_bags import base_action, frame_id, image

EVENTS, STATE, ACTION, WEIGHTS = "/r/episode/events", "/r/arm/state", "/r/policy/base/action", "/r/weights"
CAMERA = "/r/cameras/wrist/image_raw"
T0 = 1_700_000_000_000_000_000
MS = 1_000_000
STRING = "std_msgs/msg/String"
IDENTITY = EpisodeMetadata(robot_id="rig", profile="pick", prompt="pick up the cube")


class Log:
    """Collects the recorder's log lines, whatever their level."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    warning = error = info


class Clock:
    """The recorder's clock, moved by the test (the end grace depends on it)."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def message(msgtype: str, **fields: Any) -> Any:
    cls: Any = typestore().types[msgtype]
    return cls(**fields)


def header(stamp_ns: int = 0) -> Any:
    stamp = message("builtin_interfaces/msg/Time", sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    return message("std_msgs/msg/Header", stamp=stamp, frame_id="")


def serialize(msgtype: str, value: Any) -> bytes:
    return bytes(typestore().serialize_cdr(value, msgtype))


def event(
    kind: EventKind,
    episode: int,
    stamp_ns: int,
    phase: Phase,
    outcome: Outcome = Outcome.NONE,
    robot: str = "rig",
    stage: str = "",
) -> bytes:
    """An EpisodeEvent as the supervisor publishes it (stamped ``stamp_ns``)."""
    value = message(
        EVENT_TYPE,
        header=header(stamp_ns),
        robot_id=robot,
        episode_id=episode,
        event=int(kind),
        phase=message("pld_msgs/msg/EpisodePhase", value=int(phase)),
        outcome=message("pld_msgs/msg/EpisodeOutcome", value=int(outcome)),
        mode=message("pld_msgs/msg/RunMode", value=int(RunMode.PROBE_TAKEOVER)),
        step=episode,
        probe_steps=3,
        reason=outcome.name.lower() if outcome is not Outcome.NONE else "",
        stage=stage,
    )
    return serialize(EVENT_TYPE, value)


def weights(version: int) -> bytes:
    value = message(
        WEIGHTS_TYPE,
        header=header(),
        policy="residual",
        version=version,
        sha256="",
        size=0,
        uri="",
        format="safetensors",
        trainer_id="",
    )
    return serialize(WEIGHTS_TYPE, value)


def state(index: int) -> bytes:
    """Stands in for an arm state: a std_msgs/String holding ``index``."""
    return serialize(STRING, message(STRING, data=str(index)))


def state_ids(reader: BagReader) -> list[int]:
    store = typestore()
    messages: list[Any] = [store.deserialize_cdr(m.data, m.msgtype) for m in reader.messages({STATE})]
    return [int(m.data) for m in messages]


def wait(done: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def recorder(tmp_path: Path, clock: Clock) -> Iterator[BagRecorder]:
    recorder = BagRecorder(
        tmp_path / "bags", IDENTITY, Log(), events_topic=EVENTS, end_grace=0.2, not_before_ns=T0, clock=clock
    )
    for name, msgtype in (
        (EVENTS, EVENT_TYPE),
        (STATE, STRING),
        (ACTION, BASE_ACTION_TYPE),
        (WEIGHTS, WEIGHTS_TYPE),
    ):
        recorder.add_topic(RecordedTopic(name, msgtype))
    recorder.start()
    yield recorder
    recorder.stop()


def test_one_complete_bag_per_episode_with_its_metadata(
    recorder: BagRecorder, clock: Clock, tmp_path: Path
) -> None:
    put = recorder.put
    put(WEIGHTS, T0, weights(4))  # announced before any episode
    put(STATE, T0 + 1 * MS, state(0))  # outside an episode: skipped
    put(EVENTS, T0 + 2 * MS, event(EventKind.STARTED, 1, T0 + 2 * MS, Phase.PROBING))
    for index in range(1, 11):
        put(STATE, T0 + (2 + index) * MS, state(index))
    put(ACTION, T0 + 13 * MS, base_action(13))
    put(EVENTS, T0 + 14 * MS, event(EventKind.PHASE_CHANGED, 1, T0 + 14 * MS, Phase.TAKEOVER))
    put(EVENTS, T0 + 15 * MS, event(EventKind.ENDED, 1, T0 + 15 * MS, Phase.DONE, Outcome.SUCCESS))
    put(STATE, T0 + 16 * MS, state(11))  # within the end grace: still episode 1's
    wait(lambda: recorder.status().written == 15, "the first episode written")
    assert recorder.status().current_bag  # open until the grace has passed
    clock.now = T0 + 15 * MS + 200 * MS
    wait(lambda: recorder.status().current_bag == "", "the first bag closed")
    put(STATE, clock.now + 1, state(12))  # after the grace, before the next episode: skipped
    put(EVENTS, clock.now + 2, event(EventKind.STARTED, 2, clock.now + 2, Phase.PROBING))
    put(STATE, clock.now + 3, state(13))
    assert recorder.stop()

    status = recorder.status()
    assert (status.received, status.written, status.skipped, status.bags, status.dropped) == (20, 17, 3, 2, 0)
    first, second = sorted((tmp_path / "bags").iterdir())
    assert first.name.startswith("rig-000001-") and second.name.startswith("rig-000002-")
    info = bag_info(first)
    assert info.complete
    meta = info.metadata
    assert meta is not None
    assert (meta.robot_id, meta.profile, meta.prompt, meta.episode_id) == (
        "rig",
        "pick",
        "pick up the cube",
        1,
    )
    assert (meta.mode, meta.outcome, meta.reason, meta.probe_steps) == (
        RunMode.PROBE_TAKEOVER,
        Outcome.SUCCESS,
        "success",
        3,
    )
    assert [(m.phase, m.stamp_ns - T0) for m in meta.phases] == [
        (Phase.PROBING, 2 * MS),
        (Phase.TAKEOVER, 14 * MS),
        (Phase.DONE, 15 * MS),
    ]
    assert meta.policy_versions == {"residual": "4", "base": "onnx:pick.onnx"}
    assert state_ids(BagReader(first)) == list(range(1, 12))
    counts = {t.name: t.count for t in info.topics}
    assert counts[EVENTS] == 3 and counts[ACTION] == 1 and counts[WEIGHTS] == 0
    assert counts[EPISODE_META_TOPIC] == 4  # at the start, each event after it, and at the close
    second_meta = bag_info(second).metadata
    assert (
        second_meta is not None and second_meta.outcome is None and second_meta.reason == "recorder stopped"
    )
    assert state_ids(BagReader(second)) == [13]
    assert isinstance(recorder.log, Log)
    assert [line.split(": ", 1)[1] for line in recorder.log.lines] == [
        "episode 1 success, 19 messages, 0.0 MB",  # 11 states, an action, 3 events, 4 metadata
        "episode 2 not ended (recorder stopped), 4 messages, 0.0 MB",
    ]


def test_the_newest_frames_from_between_episodes_open_the_next_bag(tmp_path: Path, clock: Clock) -> None:
    recorder = BagRecorder(tmp_path, IDENTITY, Log(), events_topic=EVENTS, not_before_ns=T0, clock=clock)
    for name, msgtype in (
        (EVENTS, EVENT_TYPE),
        (STATE, STRING),
        (CAMERA, IMAGE_TYPE),
        (ACTION, BASE_ACTION_TYPE),
    ):
        recorder.add_topic(RecordedTopic(name, msgtype))
    recorder.start()
    put = recorder.put
    put(ACTION, T0, base_action(1))  # 1.5 s before the start: older than PREROLL_AGE, left out
    for index in range(3):  # only the newest frame is kept
        put(CAMERA, T0 + (1000 + 10 * index) * MS, image(index))
    put(STATE, T0 + 1400 * MS, state(0))  # not a pre-roll type: skipped
    put(EVENTS, T0 + 1500 * MS, event(EventKind.STARTED, 1, T0 + 1500 * MS, Phase.PROBING))
    put(CAMERA, T0 + 1510 * MS, image(3))
    put(ACTION, T0 + 1520 * MS, base_action(2))  # in the episode: written, not kept for the next one
    put(EVENTS, T0 + 1600 * MS, event(EventKind.ENDED, 1, T0 + 1600 * MS, Phase.DONE, Outcome.SUCCESS))
    put(CAMERA, T0 + 1610 * MS, image(4))  # in the end grace: into this bag, and kept for the next
    # The next episode starts before the grace has passed (the clock stands still).
    put(EVENTS, T0 + 1700 * MS, event(EventKind.STARTED, 2, T0 + 1700 * MS, Phase.PROBING))
    assert recorder.stop()

    first, second = (BagReader(bag) for bag in sorted(tmp_path.iterdir()))
    assert [frame_id(m.data) for m in first.messages({CAMERA})] == [2, 3, 4]
    assert [m.timestamp_ns - T0 for m in first.messages({CAMERA})] == [1020 * MS, 1510 * MS, 1610 * MS]
    assert [m.data for m in first.messages({ACTION})] == [base_action(2)]
    assert not list(first.messages({STATE}))
    assert [frame_id(m.data) for m in second.messages({CAMERA})] == [4]
    assert not list(second.messages({ACTION}))
    status = recorder.status()
    # Written: frames 2, 3, 4 (twice: both bags), the action and three events; skipped: frames 0
    # and 1, the old action and the state.
    assert (status.received, status.written, status.skipped) == (11, 8, 4)


def test_an_episode_of_one_stage_carries_the_stage_and_its_prompt(tmp_path: Path, clock: Clock) -> None:
    recorder = BagRecorder(
        tmp_path,
        IDENTITY,
        Log(),
        events_topic=EVENTS,
        stage_prompts={"press": "press the GPU into slot 3"},
        end_grace=0.0,
        not_before_ns=T0,
        clock=clock,
    )
    for name, msgtype in ((EVENTS, EVENT_TYPE), (STATE, STRING)):
        recorder.add_topic(RecordedTopic(name, msgtype))
    recorder.start()
    for episode, stage in ((1, "press"), (2, "insert")):
        start = T0 + episode * 100 * MS
        recorder.put(EVENTS, start, event(EventKind.STARTED, episode, start, Phase.PROBING, stage=stage))
        recorder.put(STATE, start + MS, state(episode))
        end = start + 2 * MS
        recorder.put(
            EVENTS, end, event(EventKind.ENDED, episode, end, Phase.DONE, Outcome.SUCCESS, stage=stage)
        )
    assert recorder.stop()
    metas = [bag_info(path).metadata for path in sorted(tmp_path.iterdir())]
    assert [(m.stage, m.prompt) for m in metas if m is not None] == [
        ("press", "press the GPU into slot 3"),
        ("insert", "pick up the cube"),  # a stage without a prompt of its own: the policy's
    ]


def test_history_and_other_robots_events_split_nothing(recorder: BagRecorder, tmp_path: Path) -> None:
    # Transient-local history from before the recorder started, and another robot's live episode.
    recorder.put(EVENTS, T0 + MS, event(EventKind.STARTED, 3, T0 - 5 * MS, Phase.PROBING))
    recorder.put(EVENTS, T0 + 2 * MS, event(EventKind.STARTED, 4, T0 + 2 * MS, Phase.PROBING, robot="other"))
    recorder.put(STATE, T0 + 3 * MS, state(0))
    assert recorder.stop()
    assert recorder.status().skipped == 3 and not any((tmp_path / "bags").iterdir())


def test_a_session_bag_holds_everything(tmp_path: Path) -> None:
    recorder = BagRecorder(
        tmp_path, IDENTITY, Log(), events_topic=EVENTS, split="session", compression="none"
    )
    recorder.add_topic(RecordedTopic(EVENTS, EVENT_TYPE))
    recorder.add_topic(RecordedTopic(STATE, STRING))
    recorder.start()
    now = time.time_ns()
    recorder.put(STATE, now, state(0))
    recorder.put(EVENTS, now + 1, event(EventKind.STARTED, 1, now + 1, Phase.PROBING))
    recorder.put(STATE, now + 2, state(1))
    recorder.put(EVENTS, now + 3, event(EventKind.ENDED, 1, now + 3, Phase.DONE, Outcome.FAILURE))
    recorder.put(STATE, now + 4, state(2))
    assert recorder.stop()
    (bag,) = tmp_path.iterdir()
    assert bag.name.startswith("rig-session-")
    info = bag_info(bag)
    assert info.complete and info.metadata == IDENTITY
    assert state_ids(BagReader(bag)) == [0, 1, 2] and {t.name: t.count for t in info.topics}[EVENTS] == 2


def test_a_full_queue_drops_data_but_not_events(tmp_path: Path) -> None:
    recorder = BagRecorder(tmp_path, IDENTITY, Log(), events_topic=EVENTS, split="session", queue_bytes=1000)
    recorder.add_topic(RecordedTopic(EVENTS, EVENT_TYPE))
    recorder.add_topic(RecordedTopic(STATE, STRING))
    payload = serialize(STRING, message(STRING, data="x" * 300))  # three fit in 1000 bytes
    accepted = [recorder.put(STATE, T0 + i, payload) for i in range(10)]  # the writer is not running yet
    assert recorder.put(EVENTS, T0 + 20, event(EventKind.STARTED, 1, T0, Phase.PROBING))
    assert accepted == [True] * 3 + [False] * 7
    assert recorder.status().queue_depth == 2 + 3 + 1  # the two topics, three states, the event
    recorder.start()
    assert recorder.stop()
    status = recorder.status()
    assert (status.received, status.dropped, status.written, status.queue_depth, status.queue_bytes) == (
        11,
        7,
        4,
        0,
        0,
    )


def test_a_failing_disk_ends_the_bag_and_the_next_episode_records_again(
    recorder: BagRecorder, tmp_path: Path
) -> None:
    bags = tmp_path / "bags"
    bags.rmdir()
    bags.write_text("not a directory")  # the bag cannot be created
    recorder.put(EVENTS, T0 + MS, event(EventKind.STARTED, 1, T0 + MS, Phase.PROBING))
    recorder.put(STATE, T0 + 2 * MS, state(0))
    wait(lambda: recorder.status().skipped == 2, "the event and the state skipped")
    status = recorder.status()
    assert status.write_errors == 1 and str(bags) in status.last_error and status.current_bag == ""
    bags.unlink()
    bags.mkdir()
    recorder.put(EVENTS, T0 + 3 * MS, event(EventKind.STARTED, 2, T0 + 3 * MS, Phase.PROBING))
    recorder.put(STATE, T0 + 4 * MS, state(1))
    assert recorder.stop()
    (bag,) = bags.iterdir()
    assert state_ids(BagReader(bag)) == [1]


def test_default_topics_cover_the_profile_graph() -> None:
    profile = load_profile("franka_pick_cube")
    topics = default_topics(profile)
    assert {"arm/state", "arm/command", "episode/events", "policy/base/action"} <= set(topics)
    for camera in profile.cameras:
        assert f"cameras/{camera}/image_raw" in topics and f"cameras/{camera}/policy_view" in topics
    assert "buffer/steps" not in topics and len(set(topics)) == len(topics)
