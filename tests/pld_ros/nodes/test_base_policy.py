"""The base policy node as a real process, ticked at 20 Hz, against a local openpi-protocol server.

No VLA runs here: the server (tests/openpi_server.py) answers ramp chunks after 300 ms, the
latency of a pi0 server on a remote GPU.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from pld_msgs.msg import ActionChunk, BaseAction, RobotState
from pld_ros.nodes.camera_publisher import SENSOR_QOS, image_message
from tests.openpi_server import OpenpiTestServer, ramp_chunk
from tests.processes import Watched, node_process
from tests.ros_probe import RosProbe

pytestmark = pytest.mark.ros

LATENCY = 0.3
HORIZON, EXECUTE = 10, 5
PERIOD = 0.05
NAMESPACE = f"/base_policy_test_{os.getpid()}"
PROFILE = """
name: base_policy_test
robot_id: test_rig
arms:
  arm:
    driver: franky
    safety: {{workspace_min: [0.2, -0.4, 0.0], workspace_max: [0.8, 0.4, 0.6]}}
cameras:
  wrist: {{driver: opencv, source: "0", fps: 30, stale_after: 0.5}}
policies:
  base:
    backend: openpi
    uri: {uri}
    prompt: pick the cube
    views: [wrist]
    chunk_horizon: {horizon}
    execute_steps: {execute}
"""


@pytest.fixture
def server() -> Iterator[OpenpiTestServer]:
    server = OpenpiTestServer(latency=LATENCY, chunks=ramp_chunk(HORIZON)).start()
    try:
        yield server
    finally:
        server.stop()


class Rig:
    """Ticks the node like an arm driver and a camera would, and keeps what it answers."""

    def __init__(self, node: Node, policy: str) -> None:
        """``policy``: the node's policy name, which tells its diagnostics from another graph's."""
        self.node = node
        self.policy = policy
        self.states: list[int] = []
        self.actions: list[BaseAction] = []
        self.chunks: list[ActionChunk] = []
        self.diagnostics: list[dict[str, str]] = []
        self.camera_on = True
        self._state_pub = node.create_publisher(RobotState, "arm/state", 10)
        self._image_pub = node.create_publisher(Image, "cameras/wrist/policy_view", SENSOR_QOS)
        deep = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(BaseAction, "policy/base/action", self.actions.append, deep)
        node.create_subscription(ActionChunk, "policy/base/chunk", self.chunks.append, deep)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        node.create_timer(PERIOD, self._tick)

    def _on_diagnostics(self, array: DiagnosticArray) -> None:
        for status in array.status:
            if status.name == "pld/policy/base" and status.hardware_id == self.policy:
                self.diagnostics.append({kv.key: kv.value for kv in status.values})

    def _tick(self) -> None:
        stamp = self.node.get_clock().now().to_msg()
        if self.camera_on:
            self._image_pub.publish(image_message(np.full((8, 8, 3), 100, np.uint8), stamp, "wrist"))
        state = RobotState(mode=RobotState.MODE_MOVING, gripper_closure=0.2)
        state.header.stamp = stamp
        state.ee_pose.position.x, state.ee_pose.orientation.w = 0.5, 1.0
        self._state_pub.publish(state)
        self.states.append(stamp.sec * 10**9 + stamp.nanosec)

    def fresh_since(self, index: int) -> int:
        return sum(a.fresh for a in self.actions[index:])

    def trailing_holds(self) -> int:
        count = 0
        for action in reversed(self.actions):
            if action.fresh:
                break
            count += 1
        return count


def stamp_ns(action: BaseAction) -> int:
    return int(action.header.stamp.sec) * 10**9 + int(action.header.stamp.nanosec)


def test_one_action_per_tick_with_bounded_age_holding_while_the_server_is_down(
    server: OpenpiTestServer, tmp_path: Path
) -> None:
    profile = tmp_path / "base_policy_test.yaml"
    profile.write_text(PROFILE.format(uri=server.uri, horizon=HORIZON, execute=EXECUTE))
    node = node_process("pld_ros.nodes.base_policy", NAMESPACE, profile)
    probe = RosProbe("base_policy_probe")
    # Topics of this run's own namespace: another test session may share the DDS domain.
    rig_node = Node("base_policy_rig", namespace=NAMESPACE, context=probe.context)
    probe.executor.add_node(rig_node)
    rig = Rig(rig_node, f"openpi:{server.uri}")
    try:
        probe.spin_until(lambda: rig.fresh_since(0) >= 40, 40.0, f"40 fresh actions\n{node.output}")

        # Exactly one action per tick: no tick answered twice, none skipped once answering began.
        stamps = [stamp_ns(a) for a in rig.actions]
        assert len(stamps) == len(set(stamps))
        first = rig.states.index(stamps[0])
        answered = set(stamps)
        in_flight = 3
        missing = [s for s in rig.states[first : len(rig.states) - in_flight] if s not in answered]
        assert not missing, f"{len(missing)} ticks without an action"

        # Ages: a chunk arrives a latency after its observation and serves until the next one.
        ages = [a.age for a in rig.actions if a.fresh]
        assert max(ages) < 2 * LATENCY + 4 * PERIOD, max(ages)
        assert all(len(a.action) == 7 for a in rig.actions)
        assert rig.chunks and rig.chunks[0].horizon == HORIZON and len(rig.chunks[0].actions) == HORIZON * 7
        assert server.requests and server.requests[0]["prompt"] == "pick the cube"

        # The server dies mid-episode: the node holds (zero delta, last gripper target 0.5).
        server.stop()
        probe.spin_until(
            lambda: rig.trailing_holds() >= 20, 10.0, f"holds after the server died\n{node.output}"
        )
        hold = rig.actions[-1]
        assert not hold.fresh and math.isnan(hold.age) and hold.chunks_averaged == 0
        np.testing.assert_allclose(hold.action, [0, 0, 0, 0, 0, 0, 0.5])
        probe.spin_until(
            lambda: bool(rig.diagnostics) and rig.diagnostics[-1]["connected"] == "false",
            5.0,
            f"diagnostics saying the server is gone: {rig.diagnostics[-1:]}",
        )
        assert int(rig.diagnostics[-1]["errors"]) >= 1

        # It comes back on the same port: fresh actions again.
        mark = len(rig.actions)
        server.start()
        probe.spin_until(
            lambda: rig.fresh_since(mark) >= 10, 15.0, f"fresh actions after the restart\n{node.output}"
        )

        # A stale camera: no inference, holds.
        rig.camera_on = False
        probe.spin_until(lambda: rig.trailing_holds() >= 10, 5.0, "holds with a stale camera")
        requests = len(server.requests)
        probe.spin_for(0.5)
        assert len(server.requests) <= requests + 1  # at most one that was already running
    finally:
        rig_node.destroy_node()
        probe.close()
        node.process.terminate()
        node.wait_exit(10.0)


def test_a_profile_without_a_base_policy_is_a_configuration_error(tmp_path: Path) -> None:
    profile = tmp_path / "no_policy.yaml"
    with_policy = PROFILE.format(uri="ws://127.0.0.1:1", horizon=1, execute=1)
    profile.write_text(with_policy.split("policies:")[0])
    node = Watched(
        [sys.executable, "-m", "pld_ros.nodes.base_policy", "--ros-args", "-p", f"profile:={profile}"]
    )
    try:
        assert node.wait_exit(30.0) == 2
        assert "has no 'policies' section" in node.output
    finally:
        node.kill()
