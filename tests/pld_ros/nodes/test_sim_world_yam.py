"""The sim_world node hosting yam_gpu_insertion, with a real arm driver node on the i2rt sim robot,
each in its own process, seen over DDS and over the openpi websocket as the graph sees them. The
base VLA cannot run here: the world's scripted expert stands in for it (that is what is tested)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String

from pld_msgs.msg import DeltaPoseCommand, RobotState, SuccessScores
from pld_msgs.srv import InjectFault, ResetScene
from pld_ros.core.observation import proprio_vector
from pld_ros.core.spatial import Pose
from pld_ros.graph import HEARTBEAT_TOPIC
from pld_ros.nodes.camera_publisher import SENSOR_QOS
from pld_ros.policies.openpi_client import OpenpiClient, OpenpiServerError
from pld_ros.sim.yam_gpu_insertion import READY_JOINTS, YamGpuInsertionWorld
from tests.pld_ros.nodes.test_sim_world import VIEWS, assert_policy_views
from tests.processes import node_process
from tests.ros_probe import RosProbe

pytestmark = pytest.mark.ros

NAMESPACE = f"/sim_world_yam_test_{os.getpid()}"
INSERT = "insert the card into slot 1"
PROFILE = """
name: yam_world_test
robot_id: yam_test
arms:
  right:
    driver: i2rt
    gripper: linear_4310
    home_joints: {home}
    safety:
      workspace_min: [0.10, -0.40, 0.01]
      workspace_max: [0.55, 0.40, 0.45]
      max_translation_step: 0.015
      max_rotation_step: 0.08
cameras:
  wrist: {{driver: sim, fps: 10}}
  side: {{driver: sim, fps: 10}}
policies:
  base: {{backend: openpi, uri: "ws://127.0.0.1:{port}", prompt: unused, chunk_horizon: 10}}
reward:
  backend: privileged
  stages:
    - {{name: insert_slot1, head: 0, prompt: {insert}, on_success: unplug_return, on_failure: recover}}
    - {{name: unplug_return, head: 3, on_success: done, on_failure: recover}}
    - {{name: recover, head: 3, prompt: put the card back}}
simulation: {{world: yam_gpu_insertion, seed: 0}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Probe(RosProbe):
    """Records what sim_world publishes, commands the arm and calls the world's services."""

    def __init__(self) -> None:
        super().__init__("sim_world_yam_probe", NAMESPACE)
        node = self.node
        self.views: dict[str, Any] = {}
        self.info: dict[str, Any] = {}
        self.stage_success: list[SuccessScores] = []
        self.failures: list[str] = []
        self.states: list[RobotState] = []
        self.beats: set[str] = set()
        self.diagnostics: list[Any] = []
        for name in VIEWS:
            node.create_subscription(
                Image, f"cameras/{name}/policy_view", self._keep(self.views, name), SENSOR_QOS
            )
            node.create_subscription(
                CameraInfo, f"cameras/{name}/camera_info", self._keep(self.info, name), SENSOR_QOS
            )
        node.create_subscription(SuccessScores, "sim/stage_success", self.stage_success.append, 50)
        node.create_subscription(String, "stage/failure", lambda m: self.failures.append(m.data), 10)
        node.create_subscription(RobotState, "right/state", self.states.append, 50)
        node.create_subscription(Header, HEARTBEAT_TOPIC, lambda m: self.beats.add(m.frame_id), 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.commands = node.create_publisher(DeltaPoseCommand, "right/command", 10)
        self.reset: Any = node.create_client(ResetScene, "sim/reset_scene")
        self.inject: Any = node.create_client(InjectFault, "sim/inject_fault")

    @staticmethod
    def _keep(latest: dict[str, Any], name: str) -> Callable[[Any], None]:
        return lambda msg: latest.__setitem__(name, msg)

    def _on_diagnostics(self, msg: Any) -> None:
        self.diagnostics.extend(s for s in msg.status if s.name == "pld/sim/yam_gpu_insertion")

    def scores(self) -> list[float]:
        return list(self.stage_success[-1].probabilities) if self.stage_success else []

    def proprio(self) -> np.ndarray:
        state = self.states[-1]
        p, q = state.ee_pose.position, state.ee_pose.orientation
        pose = Pose.of((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))
        return proprio_vector(pose, float(state.gripper_closure))

    def drive(self, row: Callable[[], np.ndarray | None], timeout: float, what: str) -> None:
        """Answer each new arm state with one action row, as the policy nodes do, until ``row``
        says done (None)."""
        end = time.monotonic() + timeout
        while (action := row()) is not None:
            seen = len(self.states)

            def answered(seen: int = seen) -> bool:
                return len(self.states) > seen

            self.command(action)
            self.spin_until(answered, end - time.monotonic(), what)

    def ready(self) -> None:
        """Bring the arm near the world's ready pose (the i2rt sim robot starts folded, at zero
        joints): half the remaining way a tick, as a command takes a tick to show in the state,
        at most 12 mm and 0.06 rad."""
        goal = YamGpuInsertionWorld().tcp_pose

        def row() -> np.ndarray | None:
            proprio = self.proprio()
            translation, rotation = Pose.of(proprio[:3], proprio[3:7]).delta_to(goal)
            if np.linalg.norm(translation) < 0.005 and np.linalg.norm(rotation) < 0.03:
                return None
            translation *= min(0.5, 0.012 / float(np.linalg.norm(translation)))
            rotation *= min(0.5, 0.06 / max(float(np.linalg.norm(rotation)), 1e-9))
            return np.array([*translation, *rotation, 0.0])

        self.drive(row, 10.0, "the arm at the ready pose")

    def command(self, row: np.ndarray) -> None:
        message = DeltaPoseCommand(gripper=float(row[6]))
        message.translation.x, message.translation.y, message.translation.z = (float(v) for v in row[:3])
        message.rotation.x, message.rotation.y, message.rotation.z = (float(v) for v in row[3:6])
        self.commands.publish(message)


@pytest.fixture
def probe() -> Iterator[Probe]:
    with Probe() as p:
        yield p


def test_the_yam_world_follows_the_arm_scores_stages_reports_lost_parts_and_serves_the_expert(
    probe: Probe, tmp_path: Path
) -> None:
    port = free_port()
    profile = tmp_path / "yam_world_test.yaml"
    profile.write_text(PROFILE.format(home=list(READY_JOINTS), port=port, insert=INSERT))
    with (
        node_process("pld_ros.nodes.sim_world", NAMESPACE, profile) as world,
        node_process("pld_ros.nodes.arm_driver", NAMESPACE, profile, arm="right") as arm,
    ):
        probe.spin_until(
            lambda: len(probe.views) == len(VIEWS) and len(probe.info) == len(VIEWS) and bool(probe.states),
            30,
            f"policy views, camera info and arm states (so far:\n{world.output}\n{arm.output})",
        )
        assert_policy_views(probe.views, probe.info)
        # The card starts home: only unplug_return's head (3) holds.
        probe.spin_until(lambda: bool(probe.stage_success), 5, "sim/stage_success")
        assert probe.stage_success[-1].privileged and probe.scores() == [0.0, 0.0, 0.0, 1.0]

        client = OpenpiClient(f"ws://127.0.0.1:{port}")
        with pytest.raises(OpenpiServerError, match="unknown prompt 'dance'"):
            client.infer({"prompt": "dance", "observation/state": probe.proprio()})

        probe.ready()
        # The expert's chunks, row 0 of each for each new state (as execute_steps 1 runs them),
        # through the real arm driver: the world follows the arm until the card stands in slot 1.
        wrist_before = bytes(probe.views["wrist"].data)

        def expert_row() -> np.ndarray | None:
            if probe.scores()[0] == 1.0:
                return None
            chunk = client.infer({"prompt": INSERT, "observation/state": probe.proprio()})["actions"]
            assert chunk.shape == (10, 7)
            return np.asarray(chunk[0])

        probe.drive(expert_row, 40.0, "the card in slot 1")
        assert probe.scores() == [1.0, 0.0, 0.0, 0.0]
        probe.spin_for(0.3)
        assert bytes(probe.views["wrist"].data) != wrist_before, "the wrist camera did not move"
        assert probe.failures == [], "no part was lost on the way"

        # The card is held in slot 1: a drop is a lost part.
        response = probe.call(probe.inject, InjectFault.Request(fault="drop"))
        assert response.success and response.message.startswith("injected drop"), response.message
        probe.spin_until(lambda: bool(probe.failures), 5, "stage/failure")
        assert probe.failures == [response.message]
        response = probe.call(probe.inject, InjectFault.Request(fault="shake"))
        assert not response.success and response.message == "unknown fault 'shake'; known: drop, knock, stall"

        response = probe.call(probe.reset, ResetScene.Request(randomize=False, seed=0))
        assert response.success and response.message.startswith("card home at x=0.220 y=-0.130")
        probe.spin_until(lambda: probe.scores() == [0.0, 0.0, 0.0, 1.0], 5, "the card home")

        probe.spin_until(lambda: NAMESPACE + "/sim_world" in probe.beats, 5, "a heartbeat")
        probe.diagnostics.clear()  # those from before the reset
        probe.spin_until(lambda: bool(probe.diagnostics), 5, "diagnostics")
        values = {kv.key: kv.value for kv in probe.diagnostics[-1].values}
        assert 0 < float(values["render_ms/wrist"]) < 200 and float(values["fps/side"]) > 3
        assert int(values["arm_states"]) > 0 and int(values["policy_answered"]) > 10
        assert int(values["policy_failed"]) == 1 and values["signal/unplug_return"] == "True"
        client.close()

        world.stop_cleanly()


def test_a_stage_without_a_world_signal_is_refused(tmp_path: Path) -> None:
    profile = tmp_path / "yam_world_test.yaml"
    text = PROFILE.format(home=list(READY_JOINTS), port=free_port(), insert=INSERT)
    profile.write_text(text.replace("{name: recover, head: 3", "{name: recover, head: 4"))
    with node_process("pld_ros.nodes.sim_world", NAMESPACE, profile) as world:
        assert world.wait_exit(timeout=30) == 2
    assert "reward.stages[2]: stage 'recover': head 4" in world.output, world.output
