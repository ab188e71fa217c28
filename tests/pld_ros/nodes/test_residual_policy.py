"""The residual policy node as a real process, ticked at 20 Hz by a test rig standing in for the
arm driver, the cameras, the base policy, the supervisor, a teleop device and the trainer."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from pld_msgs.msg import BaseAction, DeltaPoseCommand, EpisodeEvent, PolicyWeights, RobotState
from pld_ros.models.residual_actor import ResidualActor, ResidualActorConfig, save_actor
from pld_ros.nodes.camera_publisher import SENSOR_QOS, image_message
from pld_ros.nodes.qos import EVENTS_QOS, LATCHED_QOS
from pld_ros.nodes.runner import EXIT_CONFIG_ERROR
from tests.processes import Watched, node_process
from tests.ros_probe import RosProbe

pytestmark = pytest.mark.ros

PERIOD = 0.05
K = 5
BASE = [0.004, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3]
NAMESPACE = f"/residual_policy_test_{os.getpid()}"
PROFILE = """
name: residual_policy_test
robot_id: test_rig
arms:
  arm:
    driver: franky
    safety: {workspace_min: [0.2, -0.4, 0.0], workspace_max: [0.8, 0.4, 0.6], max_translation_step: 0.02}
cameras:
  wrist: {driver: opencv, source: "0", fps: 20, stale_after: 0.5, policy_view: {width: 32, height: 32}}
  side: {driver: opencv, source: "1", fps: 20, stale_after: 0.5, policy_view: {width: 32, height: 32}}
policies:
  base: {backend: openpi, uri: "ws://127.0.0.1:1", prompt: test, views: [wrist, side]}
  residual: {hidden_dim: 32, xi: {start: 1.0, end: 1.0}}
teleop: {hold_time: 0.2}
"""


class Rig:
    """Ticks the node like the graph would and keeps what it answers."""

    def __init__(self, probe: RosProbe) -> None:
        node = probe.node
        self.node = node
        self.ticks = 0
        self.fresh = True
        self.human: DeltaPoseCommand | None = None
        self.commands: list[DeltaPoseCommand] = []
        self.diagnostics: dict[str, str] = {}
        self._images = {
            v: node.create_publisher(Image, f"cameras/{v}/policy_view", SENSOR_QOS) for v in ("wrist", "side")
        }
        self._state = node.create_publisher(RobotState, "arm/state", 10)
        self._base = node.create_publisher(BaseAction, "policy/base/action", 10)
        self._teleop = node.create_publisher(DeltaPoseCommand, "arm/teleop", 10)
        self.events = node.create_publisher(EpisodeEvent, "episode/events", EVENTS_QOS)
        self.weights = node.create_publisher(PolicyWeights, "policy/residual/weights", LATCHED_QOS)
        deep = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(DeltaPoseCommand, "arm/command", self.commands.append, deep)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        node.create_timer(PERIOD, self._tick)

    def _on_diagnostics(self, array: DiagnosticArray) -> None:
        for status in array.status:
            if status.name == "pld/policy/residual":
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def _tick(self) -> None:
        stamp = self.node.get_clock().now().to_msg()
        for view, publisher in self._images.items():
            publisher.publish(
                image_message(np.full((32, 32, 3), 90 if view == "wrist" else 160, np.uint8), stamp, view)
            )
        state = RobotState(mode=RobotState.MODE_MOVING, gripper_closure=0.3)
        state.header.stamp = stamp
        state.ee_pose.position.x, state.ee_pose.orientation.w = 0.5, 1.0
        self._state.publish(state)
        if self.human is not None:
            self._teleop.publish(self.human)
        base = BaseAction(
            episode_id=7, action=BASE if self.fresh else [0.0] * 6 + [0.3], fresh=self.fresh, age=0.1
        )
        base.header.stamp = stamp
        self._base.publish(base)
        self.ticks += 1

    def event(self, kind: int, phase: int, mode: int = 1) -> None:
        event = EpisodeEvent(robot_id="test_rig", episode_id=7, event=kind, probe_steps=K)
        event.phase.value, event.mode.value = phase, mode
        self.events.publish(event)

    def announce(self, path: Path, version: int, sha256: str | None = None) -> None:
        data = path.read_bytes()
        self.weights.publish(
            PolicyWeights(
                policy="residual",
                version=version,
                sha256=sha256 or hashlib.sha256(data).hexdigest(),
                size=len(data),
                uri=f"file://{path}",
                format="safetensors",
                trainer_id="test",
            )
        )


def pushing_weights(path: Path, version: int) -> None:
    """Weights whose residual is +0.5 on every dimension with a tiny std: +0.01 m in x at xi 1."""
    actor = ResidualActor(ResidualActorConfig(hidden_dim=32))
    with torch.no_grad():
        actor.mean.bias.fill_(float(np.arctanh(0.5)))
        actor.log_std.bias.fill_(-5.0)
    save_actor(actor, path, version=version, updates=100)


@pytest.fixture
def probe() -> Iterator[RosProbe]:
    probe = RosProbe("residual_policy_probe", NAMESPACE)
    yield probe
    probe.close()


def start_node(profile: Path) -> Watched:
    return node_process("pld_ros.nodes.residual_policy", NAMESPACE, profile)


def test_commands_during_the_episode_only_switching_at_k_and_swapping_verified_weights(
    probe: RosProbe, tmp_path: Path
) -> None:
    profile = tmp_path / "residual_policy_test.yaml"
    profile.write_text(PROFILE)
    good, bad = tmp_path / "v1.safetensors", tmp_path / "v2.safetensors"
    pushing_weights(good, 1)
    pushing_weights(bad, 2)
    node = start_node(profile)
    rig = Rig(probe)
    try:
        node.wait_for("residual policy on arm", 30.0)
        probe.spin_until(lambda: bool(rig.diagnostics), 10.0, f"diagnostics\n{node.output}")
        assert rig.diagnostics["weights_version"] == "0"
        probe.spin_for(0.3)
        assert not rig.commands, "commands before the episode started"

        # STARTED: one command per base action, base for k steps, then base + xi * residual.
        rig.event(EpisodeEvent.STARTED, 2)
        probe.spin_until(lambda: len(rig.commands) >= K + 5, 10.0, f"commands\n{node.output}")
        first = rig.commands[: K + 5]
        assert [c.step for c in first] == list(range(K + 5))
        assert [c.source.value for c in first] == [0] * K + [2] * 5
        assert all(c.episode_id == 7 and c.header.frame_id == "" for c in first)
        assert all(0.1 <= c.base_action_age < 1.0 for c in first)
        assert first[0].translation.x == pytest.approx(BASE[0]) and first[0].gripper == pytest.approx(0.3)

        # Announced weights are verified and swapped in: x becomes base + 1.0 * 0.02 * 0.5.
        rig.announce(good, 1)
        probe.spin_until(
            lambda: rig.diagnostics.get("weights_version") == "1", 10.0, f"version 1\n{node.output}"
        )
        mark = len(rig.commands)
        probe.spin_until(lambda: len(rig.commands) >= mark + 3, 5.0, "commands with version 1")
        assert rig.commands[-1].source.value == 2
        assert rig.commands[-1].translation.x == pytest.approx(BASE[0] + 0.01, abs=5e-4)

        # Corrupted weights: rejected, reported, the good ones stay.
        rig.announce(bad, 2, sha256="0" * 64)
        probe.spin_until(
            lambda: rig.diagnostics.get("rejected_weights") == "1", 10.0, f"a rejection\n{node.output}"
        )
        assert rig.diagnostics["weights_version"] == "1"
        assert "sha256" in rig.diagnostics["last_rejection"]
        mark = len(rig.commands)
        probe.spin_until(lambda: len(rig.commands) >= mark + 3, 5.0, "commands after the rejection")
        assert rig.commands[-1].translation.x == pytest.approx(BASE[0] + 0.01, abs=5e-4)

        # A hold is forwarded as it is.
        rig.fresh = False
        mark = len(rig.commands)
        probe.spin_until(lambda: len(rig.commands) >= mark + 3, 5.0, "commands on holds")
        assert rig.commands[-1].source.value == 0 and rig.commands[-1].translation.x == 0.0
        rig.fresh = True

        # The human takes over while acting.
        rig.human = DeltaPoseCommand(gripper=1.0)
        rig.human.translation.z = -0.01
        probe.spin_until(lambda: rig.commands[-1].source.value == 3, 5.0, "a human step")
        assert rig.commands[-1].translation.z == pytest.approx(-0.01) and rig.commands[-1].gripper == 1.0
        rig.human = None
        probe.spin_until(lambda: rig.commands[-1].source.value == 2, 5.0, "the residual back after the human")

        # ENDED: no more commands.
        rig.event(EpisodeEvent.ENDED, 4)
        probe.spin_for(0.3)
        mark = len(rig.commands)
        probe.spin_for(0.5)
        assert len(rig.commands) == mark
        steps = [c.step for c in rig.commands]
        assert steps == list(range(len(steps)))
        probe.spin_until(
            lambda: int(rig.diagnostics.get("human_steps", "0")) >= 1, 3.0, "human steps counted"
        )
        assert float(rig.diagnostics["tick_latency_p99_ms"]) > 0.0
    finally:
        node.process.terminate()
        node.wait_exit(10.0)


def test_a_profile_without_policies_is_a_configuration_error(tmp_path: Path) -> None:
    profile = tmp_path / "no_policies.yaml"
    profile.write_text(PROFILE.split("cameras:")[0])
    node = start_node(profile)
    assert node.wait_exit(30.0) == EXIT_CONFIG_ERROR
    assert "no 'policies' section" in node.output
