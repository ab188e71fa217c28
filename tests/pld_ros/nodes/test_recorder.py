"""The recorder node as a real process: the test publishes what the supervisor, a camera and an arm
driver would (episode events, small images, arm states) and reads the bags the node leaves behind,
after SIGTERM (complete bags with metadata, the profile's control rate, and the newest frame and
state from before each episode as pre-roll) and after SIGKILL (recovered up to the last chunk)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import Reader, ReaderError
from sensor_msgs.msg import Image

from pld_msgs.msg import EpisodeEvent, RobotState
from pld_ros.core.episode import EventKind, Outcome, Phase, RunMode
from pld_ros.data.bags import BagReader, BagWarning, EpisodeMetadata, bag_info, typestore
from pld_ros.nodes.camera_publisher import image_message
from pld_ros.nodes.qos import EVENTS_QOS
from tests.processes import Watched, node_process
from tests.ros_probe import RosProbe

pytestmark = pytest.mark.ros

ROBOT = "test_rig"
NAMESPACE = f"/recorder_test_{os.getpid()}"
CAMERA, STATE, EVENTS = (
    f"{NAMESPACE}/{name}" for name in ("camera/image_raw", "arm/state", "episode/events")
)
PROFILE = """
name: recorder_test
robot_id: test_rig
supervisor:
  control_rate: 25.0
recording:
  directory: "{bags}"
  split: episode
  compression: zstd
  topics: [camera/image_raw, arm/state]
  chunk_period: {chunk_period}
"""
CHUNK_PERIOD = 0.2
"""s: short chunks, so that the test sees several of them in a few seconds."""


class Graph:
    """The supervisor's events, a camera and an arm state, published from the test process."""

    def __init__(self, probe: RosProbe) -> None:
        node = probe.node
        self.probe = probe
        reliable = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self.events = node.create_publisher(EpisodeEvent, "episode/events", EVENTS_QOS)
        self.camera = node.create_publisher(Image, "camera/image_raw", reliable)
        self.state = node.create_publisher(RobotState, "arm/state", reliable)
        self.frames = 0
        self.published = 0
        """Messages published (events, images, states)."""
        self.diagnostics: dict[str, str] = {}
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_diagnostics(self, array: DiagnosticArray) -> None:
        for status in array.status:
            if status.name == "pld/recorder" and status.hardware_id == ROBOT:
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def connect(self, node: Watched) -> None:
        self.probe.spin_until(
            lambda: self.diagnostics.get("topics_recorded") == "3",
            20.0,
            f"the recorder's three subscriptions\n{node.output}",
        )

    def event(self, kind: EventKind, episode: int, phase: Phase, outcome: Outcome = Outcome.NONE) -> None:
        """Publish an episode event, apart from the stream: messages of different topics may
        overtake each other on the way, and the test asserts exactly which frames each bag holds."""
        self.probe.spin_for(0.2)
        message = EpisodeEvent(
            robot_id=ROBOT, episode_id=episode, event=int(kind), step=self.frames, probe_steps=3
        )
        message.header.stamp = self.probe.node.get_clock().now().to_msg()
        message.phase.value, message.outcome.value = int(phase), int(outcome)
        message.mode.value = int(RunMode.PROBE_TAKEOVER)
        message.reason = outcome.name.lower() if outcome is not Outcome.NONE else ""
        self.events.publish(message)
        self.published += 1
        self.probe.spin_for(0.2)

    def stream(self, frames: int) -> list[int]:
        """``frames`` camera frames at 50 Hz, each with an arm state; their numbers."""
        sent = []
        for _ in range(frames):
            stamp = self.probe.node.get_clock().now().to_msg()
            self.camera.publish(
                image_message(np.full((12, 16, 3), self.frames % 256, np.uint8), stamp, str(self.frames))
            )
            state = RobotState(mode=RobotState.MODE_MOVING, error=str(self.frames))
            state.header.stamp = stamp
            self.state.publish(state)
            self.published += 2
            sent.append(self.frames)
            self.frames += 1
            self.probe.spin_for(0.02)
        return sent

    def settled(self, node: Watched, what: str, done: Callable[[], bool]) -> None:
        self.probe.spin_until(done, 15.0, f"{what}; diagnostics {self.diagnostics}\n{node.output}")


@pytest.fixture
def probe() -> Iterator[RosProbe]:
    probe = RosProbe("recorder_probe", NAMESPACE)
    yield probe
    probe.close()


def start(tmp_path: Path) -> tuple[Watched, Path]:
    bags = tmp_path / "bags"
    profile = tmp_path / "recorder_test.yaml"
    profile.write_text(PROFILE.format(bags=bags, chunk_period=CHUNK_PERIOD))
    node = node_process("pld_ros.nodes.recorder", NAMESPACE, profile, end_grace="0.3")
    node.wait_for("recording 2 topic", 30.0)
    return node, bags


def frame_ids(messages: list[tuple[str, bytes]]) -> list[int]:
    """The frame numbers of the recorded camera images (their frame_id), in recorded order."""
    store = typestore()
    images: list[Any] = [
        store.deserialize_cdr(data, "sensor_msgs/msg/Image") for t, data in messages if t == CAMERA
    ]
    return [int(image.header.frame_id) for image in images]


def test_sigterm_closes_complete_bags_one_per_episode(probe: RosProbe, tmp_path: Path) -> None:
    graph = Graph(probe)
    node, bags = start(tmp_path)
    try:
        graph.connect(node)
        before = graph.stream(5)  # before any episode: only the newest frame is recorded, as pre-roll
        graph.event(EventKind.STARTED, 11, Phase.PROBING)
        first = before[-1:] + graph.stream(20)
        graph.event(EventKind.PHASE_CHANGED, 11, Phase.TAKEOVER)
        first += graph.stream(20)
        graph.event(EventKind.ENDED, 11, Phase.DONE, Outcome.SUCCESS)
        graph.settled(
            node,
            "the first bag closed",
            lambda: graph.diagnostics.get("bags") == "1" and graph.diagnostics["current_bag"] == "",
        )
        between = graph.stream(5)
        graph.event(EventKind.STARTED, 12, Phase.PROBING)
        second = between[-1:] + graph.stream(15)
        graph.settled(
            node, "everything received", lambda: graph.diagnostics.get("received") == str(graph.published)
        )
        node.process.send_signal(signal.SIGTERM)
        assert node.wait_exit(30.0) == 0, node.output
    finally:
        node.kill()

    assert "bag test_rig-000011-" in node.output and "episode 11 success" in node.output
    paths = sorted(bags.iterdir())
    assert [p.name.split("-")[1] for p in paths] == ["000011", "000012"]
    for path, frames, outcome in ((paths[0], first, Outcome.SUCCESS), (paths[1], second, None)):
        info = bag_info(path)
        assert info.complete and not info.problems
        meta = info.metadata
        assert meta is not None and (meta.robot_id, meta.profile) == (ROBOT, "recorder_test")
        assert meta.control_rate == 25.0
        assert meta.mode is RunMode.PROBE_TAKEOVER and meta.probe_steps == 3 and meta.outcome is outcome
        counts = {t.name: t.count for t in info.topics}
        assert counts[CAMERA] == counts[STATE] == len(frames)
        with Reader(path) as reader:  # the standard reader opens it: a complete bag
            custom = reader.storage.metadata.custom or {}
            recorded = [(c.topic, data) for c, _, data in reader.messages()]
        assert EpisodeMetadata.from_json(custom["pld.episode"], str(path)) == meta
        assert frame_ids(recorded) == frames
    first_meta, second_meta = (bag_info(p).metadata for p in paths)
    assert first_meta is not None and second_meta is not None
    assert [m.phase for m in first_meta.phases] == [Phase.PROBING, Phase.TAKEOVER, Phase.DONE]
    assert first_meta.reason == "success" and second_meta.reason == "recorder stopped"


def test_sigkill_leaves_every_completed_chunk_readable(probe: RosProbe, tmp_path: Path) -> None:
    graph = Graph(probe)
    node, bags = start(tmp_path)
    try:
        graph.connect(node)
        graph.event(EventKind.STARTED, 5, Phase.PROBING)
        sent = graph.stream(60)
        # The bag holds the STARTED event, its metadata message and the frames; once the stream
        # pauses for longer than a chunk period, the writer closes the chunk: all of it is durable.
        graph.settled(
            node,
            "every message in a closed chunk",
            lambda: graph.diagnostics.get("durable") == str(2 + 2 * 60),
        )
        durable = int(graph.diagnostics["durable"])
        graph.stream(3)  # in flight or in the open chunk when the process dies
        node.process.kill()
        node.process.wait()
    finally:
        node.kill()

    (path,) = bags.iterdir()
    assert not (path / "metadata.yaml").exists()
    with pytest.raises((ReaderError, FileNotFoundError)):  # rosbags needs metadata.yaml and the summary
        Reader(path).open()
    with pytest.warns(BagWarning, match="without the MCAP footer|ends inside"):
        reader = BagReader(path)
    recorded = [(m.topic, m.data) for m in reader.messages()]
    ids = frame_ids(recorded)
    # Everything up to the last closed chunk, in order, and nothing invented.
    assert ids[: len(sent)] == sent and ids == list(range(len(ids)))
    assert len(recorded) >= durable
    meta = reader.metadata
    assert meta is not None and meta.episode_id == 5 and meta.outcome is None
    timestamps = [m.timestamp_ns for m in reader.messages()]
    assert timestamps == sorted(timestamps)
    info = bag_info(path)
    assert not info.complete and info.problems and info.metadata == meta
