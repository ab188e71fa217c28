"""The generated pld_msgs interfaces, exchanged between two real processes over DDS."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pld_msgs.msg import ActionSource, DeltaPoseCommand, EpisodePhase, StepRecord
from pld_msgs.srv import EStop
from tests.processes import Watched
from tests.ros_probe import RosProbe

pytestmark = pytest.mark.ros

PEER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    from pld_msgs.msg import ActionSource, DeltaPoseCommand, EpisodePhase, StepRecord
    from pld_msgs.srv import EStop

    rclpy.init()
    node = Node("peer")
    cmd_pub = node.create_publisher(DeltaPoseCommand, "/test/command", 10)
    rec_pub = node.create_publisher(StepRecord, "/test/record", 10)
    engaged = [False]

    def estop(request, response):
        engaged[0] = request.engage
        response.success, response.engaged = True, engaged[0]
        response.message = "latched: " + request.reason if request.engage else "cleared"
        return response

    node.create_service(EStop, "/test/estop", estop)

    def publish():
        cmd = DeltaPoseCommand()
        cmd.header.frame_id = "fr3_link0"
        cmd.translation.x, cmd.rotation.z, cmd.gripper = 0.01, -0.05, 1.0
        cmd.source.value = ActionSource.COMBINED
        cmd.episode_id, cmd.step, cmd.base_action_age = 7, 42, 0.125
        cmd_pub.publish(cmd)
        rec = StepRecord(robot_id="fr3_sim", episode_id=7, step=42, xi=0.1, reward=1.0, terminated=True)
        rec.phase.value = EpisodePhase.TAKEOVER
        rec.view_names = ["wrist", "side"]
        for value in (10, 20):
            img = Image(height=128, width=128, encoding="rgb8", step=384)
            img.data = np.full(128 * 128 * 3, value, dtype=np.uint8).tobytes()
            rec.views.append(img)
        rec.base_action = np.arange(7, dtype=np.float32)
        rec.residual = np.full(7, 0.5, dtype=np.float32)
        rec_pub.publish(rec)

    node.create_timer(0.1, publish)
    print("peer ready", flush=True)
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    """
)


@pytest.fixture
def peer() -> Iterator[Watched]:
    process = Watched([sys.executable, "-c", PEER])
    try:
        process.wait_for("peer ready", timeout=30)
        yield process
    finally:
        process.kill()


@pytest.fixture
def probe() -> Iterator[RosProbe]:
    with RosProbe("interface_test") as p:
        yield p


def test_command_and_step_record_cross_processes(peer: Watched, probe: RosProbe) -> None:
    received: dict[str, Any] = {}
    node = probe.node
    node.create_subscription(DeltaPoseCommand, "/test/command", lambda m: received.setdefault("cmd", m), 10)
    node.create_subscription(StepRecord, "/test/record", lambda m: received.setdefault("rec", m), 10)
    probe.spin_until(lambda: len(received) == 2, 20, "a command and a step record")

    cmd = received["cmd"]
    assert cmd.header.frame_id == "fr3_link0"
    assert (cmd.translation.x, cmd.rotation.z, cmd.gripper) == pytest.approx((0.01, -0.05, 1.0))
    assert cmd.source.value == ActionSource.COMBINED
    assert (cmd.episode_id, cmd.step, cmd.base_action_age) == (7, 42, 0.125)

    rec = received["rec"]
    assert rec.phase.value == EpisodePhase.TAKEOVER and rec.terminated and not rec.truncated
    assert list(rec.view_names) == ["wrist", "side"]
    assert [bytes(v.data[:1]) for v in rec.views] == [b"\x0a", b"\x14"]
    assert all(len(v.data) == 128 * 128 * 3 for v in rec.views)
    np.testing.assert_array_equal(rec.base_action, np.arange(7, dtype=np.float32))
    np.testing.assert_array_equal(rec.residual, np.full(7, 0.5, dtype=np.float32))


def test_estop_service_across_processes(peer: Watched, probe: RosProbe) -> None:
    client: Any = probe.node.create_client(EStop, "/test/estop")
    response = probe.call(client, EStop.Request(engage=True, reason="operator"))
    assert response.success and response.engaged and response.message == "latched: operator"


def test_action_and_constants_are_generated() -> None:
    from pld_msgs.action import RunEpisodes
    from pld_msgs.msg import EpisodeOutcome, RobotState, RunMode

    goal = RunEpisodes.Goal(episodes=3, successes=0)
    goal.mode.value = RunMode.PROBE_TAKEOVER
    feedback = RunEpisodes.Feedback()
    feedback.status.phase.value = EpisodePhase.RESETTING
    assert goal.mode.value == 1 and feedback.status.phase.value == 1
    assert EpisodeOutcome.ABORTED == 3 and RobotState.MODE_ESTOP == 4
