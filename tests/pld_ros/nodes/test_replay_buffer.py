"""The replay-buffer node as a real process: the test publishes what the residual node and the
supervisor would (step records, ENDED events) and checks the episode files and the stream."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy

from pld_msgs.msg import EpisodeEvent, StepRecord
from pld_ros.core.episode import Outcome, Phase, RunMode, Source
from pld_ros.core.observation import PROPRIO_DIM
from pld_ros.learning.episode_store import EpisodeStore, episode_file_name
from pld_ros.nodes.camera_publisher import image_message
from pld_ros.nodes.qos import EVENTS_QOS
from pld_ros.nodes.replay_buffer import EPISODES_TOPIC, STEPS_QOS, STEPS_TOPIC
from tests.processes import Watched, node_process
from tests.ros_probe import RosProbe

pytestmark = pytest.mark.ros

ROBOT = "test_rig"
RUN_ID = "replay_buffer_test-20260101T000000Z"
NAMESPACE = f"/replay_buffer_test_{os.getpid()}"
K = 3
PROFILE = """
name: replay_buffer_test
robot_id: test_rig
arms:
  arm:
    driver: franky
    safety: {{workspace_min: [0.2, -0.4, 0.0], workspace_max: [0.8, 0.4, 0.6]}}
cameras:
  wrist: {{driver: opencv, source: "0", fps: 20, policy_view: {{width: 16, height: 12}}}}
  side: {{driver: opencv, source: "1", fps: 20, policy_view: {{width: 16, height: 12}}}}
policies:
  base: {{backend: openpi, uri: "ws://127.0.0.1:1", prompt: test, views: [wrist, side]}}
supervisor: {{max_episode_steps: 20, run_directory: "{runs}"}}
buffer: {{directory: "{episodes}"}}
"""


class Side:
    """The residual node's records, the supervisor's events; the trainer's end of the stream."""

    def __init__(self, probe: RosProbe) -> None:
        node = probe.node
        self.probe = probe
        self.records = node.create_publisher(StepRecord, STEPS_TOPIC, STEPS_QOS)
        self.events = node.create_publisher(EpisodeEvent, "episode/events", EVENTS_QOS)
        self.streamed: list[Any] = []
        self.sent = 0
        self.diagnostics: dict[str, str] = {}
        deep = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(StepRecord, EPISODES_TOPIC, self.streamed.append, deep)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_diagnostics(self, array: DiagnosticArray) -> None:
        for status in array.status:
            if status.name == "pld/replay_buffer":
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def connect(self, node: Watched) -> None:
        self.probe.spin_until(
            lambda: self.records.get_subscription_count() > 0 and self.events.get_subscription_count() > 0,
            20.0,
            f"the node's subscriptions\n{node.output}",
        )

    def tick(self, episode_id: int, step: int, mode: RunMode = RunMode.PROBE_TAKEOVER) -> None:
        """A record whose contents encode its episode and step."""
        takeover = mode is RunMode.PROBE_TAKEOVER and step >= K
        record = StepRecord(
            robot_id=ROBOT,
            episode_id=episode_id,
            step=step,
            xi=0.5,
            base_policy="onnx:test",
            residual_version=2,
            view_names=["wrist", "side"],
        )
        stamp = self.probe.node.get_clock().now().to_msg()
        record.header.stamp = stamp
        record.mode.value = int(mode)
        record.phase.value = int(Phase.TAKEOVER if takeover else Phase.PROBING)
        record.source.value = int(Source.COMBINED if takeover else Source.BASE)
        record.views = [
            image_message(np.full((12, 16, 3), 10 * episode_id + step + offset, np.uint8), stamp, view)
            for offset, view in ((0, "wrist"), (100, "side"))
        ]
        record.proprio = np.full(PROPRIO_DIM, step, np.float32)
        record.base_action = np.full(7, episode_id + 0.01 * step, np.float32)
        record.residual = np.full(7, 0.5 if takeover else 0.0, np.float32)
        record.executed_action = np.asarray(record.base_action) + 0.25 * np.asarray(record.residual)
        self.records.publish(record)
        self.sent += 1

    def delivered(self, open_episode: str) -> None:
        """Wait until the node has every record sent so far and ``open_episode`` open ("": none).

        The graph spreads an episode's records over seconds and starts the next episode seconds
        after an ENDED event; a test that publishes at once must wait instead, or a small event
        could overtake the big records published before it, or the reverse.
        """

        def settled() -> bool:
            diagnostics = self.diagnostics
            return (
                diagnostics.get("records") == str(self.sent) and diagnostics["open_episode"] == open_episode
            )

        self.probe.spin_until(settled, 10.0, f"{self.sent} records delivered, open episode {open_episode!r}")

    def end(
        self,
        episode_id: int,
        outcome: Outcome,
        steps: int,
        mode: RunMode = RunMode.PROBE_TAKEOVER,
        stage: str = "",
    ) -> None:
        event = EpisodeEvent(
            robot_id=ROBOT, episode_id=episode_id, event=EpisodeEvent.ENDED, step=steps, stage=stage
        )
        event.outcome.value, event.mode.value, event.phase.value = int(outcome), int(mode), int(Phase.DONE)
        self.events.publish(event)

    def episode(
        self, episode_id: int, steps: range, outcome: Outcome, mode: RunMode, stage: str = ""
    ) -> None:
        for step in steps:
            self.tick(episode_id, step, mode)
        self.delivered(str(episode_id))
        self.end(episode_id, outcome, len(steps), mode, stage)
        self.delivered("")


@pytest.fixture
def probe() -> Iterator[RosProbe]:
    probe = RosProbe("replay_buffer_probe", NAMESPACE)
    yield probe
    probe.close()


def start_node(profile: Path) -> Watched:
    return node_process("pld_ros.nodes.replay_buffer", NAMESPACE, profile, end_grace="5.0")


def stored(directory: Path) -> dict[int, Any]:
    """Every episode file, loaded (a file that does not load fails the test)."""
    store = EpisodeStore(directory, writable=False)
    episodes = {e.meta.episode_id: e for e in store.episodes()}
    assert not store.problems, store.problems
    return episodes


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and p.name != ".writer.lock")


def test_ended_episodes_are_stored_whole_streamed_and_survive_a_killed_node(
    probe: RosProbe, tmp_path: Path
) -> None:
    episodes_dir, runs = tmp_path / "episodes", tmp_path / "runs"
    (runs / RUN_ID).mkdir(parents=True)
    profile = tmp_path / "replay_buffer_test.yaml"
    profile.write_text(PROFILE.format(runs=runs, episodes=episodes_dir))
    side = Side(probe)
    node = start_node(profile)
    try:
        node.wait_for("replay buffer of test_rig", 30.0)
        side.connect(node)
        side.episode(1, range(10), Outcome.SUCCESS, RunMode.PROBE_TAKEOVER)
        side.episode(2, range(6), Outcome.FAILURE, RunMode.BASE_ONLY)
        for step in (0, 1, 3):  # step 2 lost on the way: incomplete, reported, not stored
            side.tick(3, step)
        side.delivered("3")
        side.end(3, Outcome.SUCCESS, 4)
        side.delivered("")
        probe.spin_until(
            lambda: len(side.streamed) >= 16 and side.diagnostics.get("incomplete") == "1",
            20.0,
            f"two episodes streamed and one reported\n{node.output}",
        )
        node.wait_for(r"not stored: episode 3 incomplete: step\(s\) 2 missing", 5.0)

        files = stored(episodes_dir)
        assert sorted(files) == [1, 2]
        first = files[1]
        assert len(first) == 10 and first.view_names == ("wrist", "side")
        np.testing.assert_array_equal(first.views[:, 0, 0, 0, 0], 10 + np.arange(10))
        np.testing.assert_array_equal(first.views[:, 1, 5, 7, 2], 110 + np.arange(10))
        np.testing.assert_allclose(first.base_action[:, 0], 1 + 0.01 * np.arange(10), rtol=1e-6)
        np.testing.assert_array_equal(first.residual[:, 0], [0.0] * K + [0.5] * 7)
        np.testing.assert_allclose(
            first.executed_action[:, 0], first.base_action[:, 0] + 0.25 * first.residual[:, 0]
        )
        np.testing.assert_array_equal(first.reward, [0.0] * 9 + [1.0])
        np.testing.assert_array_equal(first.done, [False] * 9 + [True])
        np.testing.assert_array_equal(first.phase, [Phase.PROBING] * K + [Phase.TAKEOVER] * 7)
        assert (first.meta.outcome, first.meta.run_id, first.meta.residual_version) == (
            Outcome.SUCCESS,
            RUN_ID,
            "2",
        )
        second = files[2]
        assert second.meta.mode is RunMode.BASE_ONLY and not second.reward.any() and second.done[-1]

        # The stream: each episode in step order, the end flags on its last tick.
        by_episode = {i: [r for r in side.streamed if r.episode_id == i] for i in (1, 2)}
        assert [r.step for r in by_episode[1]] == list(range(10))
        assert [r.terminated for r in by_episode[1]] == [False] * 9 + [True]
        assert [r.truncated for r in by_episode[2]] == [False] * 5 + [True]
        assert not any(r.terminated for r in by_episode[2])
        assert by_episode[1][-1].reward == 1.0 and by_episode[1][-1].outcome.value == Outcome.SUCCESS
        assert bytes(by_episode[1][4].views[1].data[:1]) == bytes([114])
        probe.spin_until(
            lambda: side.diagnostics.get("online") == "2", 5.0, f"diagnostics\n{side.diagnostics}"
        )
        assert side.diagnostics["episodes_written"] == "2"

        # An ended episode still waiting for its last records is written when the node is stopped.
        for step in range(5):
            side.tick(4, step)
        side.delivered("4")
        side.end(4, Outcome.FAILURE, 8)
        probe.spin_for(0.5)
        node.process.send_signal(signal.SIGTERM)
        assert node.wait_exit(30.0) == 0, node.output
        assert "writing 1 queued episode(s) before exiting" in node.output
        assert len(stored(episodes_dir)[4]) == 5

        # SIGKILL in the middle of the next episode: the earlier files stay whole, nothing partial.
        node = start_node(profile)
        side.sent, side.diagnostics = 0, {}
        node.wait_for("replay buffer of test_rig", 30.0)
        side.connect(node)
        for step in range(6):
            side.tick(5, step)
        side.delivered("5")
        node.process.kill()
        node.process.wait()
        assert sorted(stored(episodes_dir)) == [1, 2, 4]
        assert sorted(p.name for p in episodes_dir.glob("*.npz")) == [
            episode_file_name(ROBOT, i) for i in (1, 2, 4)
        ]
        assert leftovers(episodes_dir) == []
    finally:
        node.kill()


def test_only_the_trained_stages_episodes_are_streamed_and_every_stage_is_stored(
    probe: RosProbe, tmp_path: Path
) -> None:
    episodes_dir, runs = tmp_path / "episodes", tmp_path / "runs"
    profile = tmp_path / "replay_buffer_stages.yaml"
    stages = (
        "reward: {backend: onnx, path: reward.onnx, views: [wrist, side], stages: ["
        "{name: insert, threshold: 0.5, on_success: press},"
        " {name: press, threshold: 0.5, on_success: insert}]}\n"
    )
    text = PROFILE.format(runs=runs, episodes=episodes_dir).replace(
        "supervisor: {", "supervisor: {train_stages: [press], episode_scope: stage, "
    )
    profile.write_text(text + stages)
    side = Side(probe)
    node = start_node(profile)
    try:
        node.wait_for("replay buffer of test_rig", 30.0)
        side.connect(node)
        side.episode(1, range(6), Outcome.SUCCESS, RunMode.BASE_ONLY, stage="insert")
        side.episode(2, range(8), Outcome.SUCCESS, RunMode.PROBE_TAKEOVER, stage="press")
        probe.spin_until(
            lambda: side.diagnostics.get("episodes_written") == "2", 20.0, f"two episodes\n{node.output}"
        )
        assert sorted(stored(episodes_dir)) == [1, 2], "every stage's episodes are kept for distilling"
        probe.spin_until(lambda: len(side.streamed) >= 8, 10.0, "the trained stage's episode streamed")
        probe.spin_for(0.5)
        assert {r.episode_id for r in side.streamed} == {2}
        assert side.diagnostics["other_stage"] == "1"
    finally:
        node.kill()
