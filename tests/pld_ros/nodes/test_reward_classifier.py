"""The reward classifier node as a real process, ticked at 20 Hz by a test rig standing in for the
arm driver, the cameras and the simulator. The classifier is a small untrained one: what is tested
is the plumbing (one score per tick, the model's own output, stale cameras, the thresholds from
its metadata), not its accuracy."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Bool

from pld_msgs.msg import RobotState, SuccessScores
from pld_ros.models.resnet10 import ResNet10Config
from pld_ros.models.success_classifier import (
    SuccessClassifier,
    SuccessClassifierConfig,
    export_onnx,
    save_classifier,
)
from pld_ros.nodes.camera_publisher import SENSOR_QOS, image_message
from pld_ros.nodes.reward_classifier import torch_classifier
from pld_ros.nodes.runner import EXIT_CONFIG_ERROR, NodeConfigError
from pld_ros.training.reward_metadata import RewardModelMetadata
from tests.processes import Watched, node_process
from tests.ros_probe import RosProbe

pytestmark = pytest.mark.ros

PERIOD = 0.05
SIZE = 32
NAMESPACE = f"/reward_classifier_test_{os.getpid()}"
PROFILE = """
name: reward_test
robot_id: test_rig
arms:
  arm:
    driver: franky
    safety: {{workspace_min: [0.2, -0.4, 0.0], workspace_max: [0.8, 0.4, 0.6]}}
cameras:
  wrist: {{driver: {driver}, source: "0", fps: 20, stale_after: 0.3, policy_view: {{width: 32, height: 32}}}}
  side: {{driver: {driver}, source: "1", fps: 20, stale_after: 0.3, policy_view: {{width: 32, height: 32}}}}
reward:
  backend: {backend}
  path: {path}
  views: [wrist, side]
  stages:
    - {{name: grasp, head: 0, on_success: lift{grasp}}}
    - {{name: lift, head: 1{lift}}}
"""
GIVEN = {"grasp": ", threshold: 0.5", "lift": ", threshold: 0.5"}
"""Both stages' thresholds in the profile: needed with a model that has none in its metadata."""
SIM = "simulation: {world: external}\n"
CONFIG = SuccessClassifierConfig(
    encoder=ResNet10Config(widths=(8, 8, 16, 16), embedding_dim=8), num_heads=2, hidden_dim=32
)
WRIST, SIDE = 90, 160
"""Pixel values of the rig's constant views."""


class Rig:
    def __init__(self, probe: RosProbe) -> None:
        node = probe.node
        self.node = node
        self.camera_on = True
        self.success: bool | None = None
        self.stage_success: list[float] | None = None
        self.states: list[int] = []
        self.scores: list[SuccessScores] = []
        self.diagnostics: dict[str, str] = {}
        self._images = {
            v: node.create_publisher(Image, f"cameras/{v}/policy_view", SENSOR_QOS) for v in ("wrist", "side")
        }
        self._state = node.create_publisher(RobotState, "arm/state", 10)
        self._success = node.create_publisher(Bool, "sim/success", 10)
        self._stage_success = node.create_publisher(SuccessScores, "sim/stage_success", 10)
        deep = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(SuccessScores, "reward/scores", self.scores.append, deep)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        node.create_timer(PERIOD, self._tick)

    def _on_diagnostics(self, array: DiagnosticArray) -> None:
        for status in array.status:
            if status.name == "pld/reward":
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def _tick(self) -> None:
        stamp = self.node.get_clock().now().to_msg()
        if self.camera_on:
            for view, publisher in self._images.items():
                value = WRIST if view == "wrist" else SIDE
                publisher.publish(image_message(np.full((SIZE, SIZE, 3), value, np.uint8), stamp, view))
        if self.success is not None:
            self._success.publish(Bool(data=self.success))
        if self.stage_success is not None:
            self._stage_success.publish(SuccessScores(probabilities=self.stage_success, privileged=True))
        state = RobotState(mode=RobotState.MODE_MOVING)
        state.header.stamp = stamp
        self._state.publish(state)
        self.states.append(stamp.sec * 10**9 + stamp.nanosec)


@pytest.fixture
def rig() -> Iterator[Rig]:
    probe = RosProbe("reward_probe", NAMESPACE)
    rig = Rig(probe)
    rig.probe = probe  # type: ignore[attr-defined]
    yield rig
    probe.close()


def start_node(profile: Path) -> Watched:
    return node_process("pld_ros.nodes.reward_classifier", NAMESPACE, profile)


def stop(node: Watched) -> None:
    node.process.terminate()
    node.wait_exit(10.0)


def stamp_ns(scores: SuccessScores) -> int:
    return int(scores.header.stamp.sec) * 10**9 + int(scores.header.stamp.nanosec)


def test_privileged_scores_follow_the_simulator_once_per_tick(rig: Rig, tmp_path: Path) -> None:
    probe: RosProbe = rig.probe  # type: ignore[attr-defined]
    profile = tmp_path / "reward_test.yaml"
    profile.write_text(
        PROFILE.format(driver="sim", backend="privileged", path="null", grasp="", lift="") + SIM
    )
    node = start_node(profile)
    try:
        node.wait_for("reward classifier", 30.0)
        probe.spin_for(0.3)
        assert not rig.scores, "scores before the simulator said anything"
        rig.success = False
        probe.spin_until(lambda: len(rig.scores) >= 10, 10.0, f"scores\n{node.output}")
        assert rig.scores[0].privileged and list(rig.scores[0].probabilities) == [0.0, 0.0]
        rig.success = True
        probe.spin_until(lambda: list(rig.scores[-1].probabilities) == [1.0, 1.0], 5.0, "success")
        # One score per tick: each stamped with its own state.
        stamps = [stamp_ns(s) for s in rig.scores]
        assert len(set(stamps)) == len(stamps) and set(stamps) <= set(rig.states)
        first = rig.states.index(stamps[0])
        assert len(stamps) >= len(rig.states[first:]) - 3  # at most a few in flight
    finally:
        stop(node)


def test_privileged_scores_take_a_multi_stage_worlds_values_head_by_head(rig: Rig, tmp_path: Path) -> None:
    probe: RosProbe = rig.probe  # type: ignore[attr-defined]
    profile = tmp_path / "reward_test.yaml"
    profile.write_text(
        PROFILE.format(driver="sim", backend="privileged", path="null", grasp="", lift="") + SIM
    )
    node = start_node(profile)
    try:
        node.wait_for("reward classifier", 30.0)
        rig.success = True
        probe.spin_until(lambda: bool(rig.scores), 10.0, f"scores\n{node.output}")
        # The world's score per head wins over the single-stage signal, extra heads are ignored.
        rig.stage_success = [0.0, 1.0, 1.0]
        probe.spin_until(lambda: list(rig.scores[-1].probabilities) == [0.0, 1.0], 5.0, "per-head scores")
        rig.stage_success = [1.0, 0.0]
        probe.spin_until(lambda: list(rig.scores[-1].probabilities) == [1.0, 0.0], 5.0, "new per-head scores")
        assert all(s.privileged for s in rig.scores)
        # Fewer values than the stages' heads: no scores rather than made-up ones.
        rig.stage_success = [1.0]
        probe.spin_for(0.3)
        mark = len(rig.scores)
        probe.spin_for(0.5)
        assert len(rig.scores) == mark, "scores from a world with too few heads"
        probe.spin_until(
            lambda: int(rig.diagnostics.get("short_stage_success_ticks", "0")) >= 5, 3.0, "the ticks counted"
        )
        assert (
            "sim/stage_success has 1 value(s), the stages need 2" in node.wait_for("the stages need").string
        )
    finally:
        stop(node)


def test_onnx_scores_are_the_models_output_and_a_stale_camera_gives_none(rig: Rig, tmp_path: Path) -> None:
    probe: RosProbe = rig.probe  # type: ignore[attr-defined]
    torch.manual_seed(0)
    model = SuccessClassifier(CONFIG).eval()
    path = tmp_path / "classifier.onnx"
    export_onnx(model, path, views=2, height=SIZE, width=SIZE)
    images = torch.stack(
        [
            torch.full((SIZE, SIZE, 3), WRIST, dtype=torch.uint8),
            torch.full((SIZE, SIZE, 3), SIDE, dtype=torch.uint8),
        ]
    )[None]
    with torch.inference_mode():
        expected = model(images)[0].numpy()
    profile = tmp_path / "reward_test.yaml"
    profile.write_text(PROFILE.format(driver="opencv", backend="onnx", path=path, **GIVEN))
    node = start_node(profile)
    try:
        node.wait_for("reward classifier", 30.0)
        probe.spin_until(lambda: len(rig.scores) >= 20, 10.0, f"scores\n{node.output}")
        assert not rig.scores[-1].privileged and rig.scores[-1].inference_time > 0.0
        np.testing.assert_allclose(rig.scores[-1].probabilities, expected, atol=1e-5)
        stamps = [stamp_ns(s) for s in rig.scores]
        # The views' capture time (which the rig shares with its state), through float seconds.
        states = np.array(rig.states)
        assert all(np.abs(states - stamp).min() < 1000 for stamp in stamps)
        probe.spin_until(lambda: int(rig.diagnostics.get("published", "0")) >= 20, 5.0, "diagnostics")
        counts = rig.diagnostics
        assert int(counts["published"]) == int(counts["ticks"]) - int(counts["stale_camera_ticks"])

        rig.camera_on = False
        probe.spin_for(0.6)  # past stale_after
        mark = len(rig.scores)
        probe.spin_for(0.5)
        assert len(rig.scores) == mark, "scores from a stale camera"
        probe.spin_until(
            lambda: rig.diagnostics.get("stale_reason", "") != "", 3.0, "the stale camera reported"
        )
        assert int(rig.diagnostics["stale_camera_ticks"]) >= 5
    finally:
        stop(node)


def test_a_classifier_with_too_few_heads_is_refused(tmp_path: Path) -> None:
    model = SuccessClassifier(SuccessClassifierConfig(encoder=CONFIG.encoder, num_heads=1, hidden_dim=8))
    path = tmp_path / "one_head.onnx"
    export_onnx(model, path, views=2, height=SIZE, width=SIZE)
    profile = tmp_path / "reward_test.yaml"
    profile.write_text(PROFILE.format(driver="opencv", backend="onnx", path=path, **GIVEN))
    node = start_node(profile)
    assert node.wait_exit(30.0) == EXIT_CONFIG_ERROR
    assert "the stages need [1, >= 2]" in node.output


def test_torch_backend_loads_a_state_dict_with_its_config(tmp_path: Path) -> None:
    model = SuccessClassifier(CONFIG).eval()
    path = tmp_path / "classifier.safetensors"
    save_classifier(model, path)
    classify, device, metadata = torch_classifier(path)
    images = np.random.default_rng(0).integers(0, 256, (3, 2, SIZE, SIZE, 3), dtype=np.uint8)
    with torch.inference_mode():
        np.testing.assert_allclose(classify(images), model(torch.from_numpy(images)).numpy(), atol=1e-6)
    assert device == "torch cpu" and metadata is None


def test_torch_backend_refuses_a_pickle(tmp_path: Path) -> None:
    path = tmp_path / "classifier.pt"
    torch.save(SuccessClassifier(CONFIG).state_dict(), path)
    with pytest.raises(NodeConfigError, match="only safetensors"):
        torch_classifier(path)


def exported_with_metadata(path: Path, views: tuple[str, ...], thresholds: tuple[float, float]) -> Path:
    """An untrained classifier exported as ``pld reward train`` exports one: thresholds and views in
    the ONNX metadata."""
    export_onnx(SuccessClassifier(CONFIG).eval(), path, views=2, height=SIZE, width=SIZE)
    model = onnx.load(str(path))
    metadata = RewardModelMetadata(
        views=views, heads=("grasp", "lift"), thresholds=thresholds, precision_target=0.99
    )
    for key, value in metadata.props().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_thresholds_are_the_models_own_unless_the_profile_overrides_them(rig: Rig, tmp_path: Path) -> None:
    probe: RosProbe = rig.probe  # type: ignore[attr-defined]
    path = exported_with_metadata(tmp_path / "classifier.onnx", ("wrist", "side"), (0.73, 0.81))
    profile = tmp_path / "reward_test.yaml"
    # grasp: none given, so the model's 0.73 for head 0; lift: the profile's 0.6 over the model's 0.81.
    profile.write_text(
        PROFILE.format(driver="opencv", backend="onnx", path=path, grasp="", lift=", threshold: 0.6")
    )
    node = start_node(profile)
    try:
        expected = "grasp=0.73 (model), lift=0.6 (profile, model 0.81)"
        node.wait_for(re.escape(f"thresholds {expected}"), 30.0)
        probe.spin_until(lambda: bool(rig.diagnostics), 5.0, f"diagnostics\n{node.output}")
        assert rig.diagnostics["thresholds"] == expected
        probe.spin_until(lambda: len(rig.scores) >= 3, 10.0, f"scores\n{node.output}")
    finally:
        stop(node)


def test_a_model_without_thresholds_and_a_stage_without_one_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "plain.onnx"
    export_onnx(SuccessClassifier(CONFIG).eval(), path, views=2, height=SIZE, width=SIZE)
    profile = tmp_path / "reward_test.yaml"
    profile.write_text(
        PROFILE.format(driver="opencv", backend="onnx", path=path, grasp="", lift=", threshold: 0.6")
    )
    node = start_node(profile)
    assert node.wait_exit(30.0) == EXIT_CONFIG_ERROR
    assert (
        f"reward.stages[0] (grasp): no threshold, and the model {path} has none in its metadata"
        in node.output
    )


def test_a_model_trained_on_other_views_is_refused(tmp_path: Path) -> None:
    path = exported_with_metadata(tmp_path / "classifier.onnx", ("side", "wrist"), (0.73, 0.81))
    profile = tmp_path / "reward_test.yaml"
    profile.write_text(PROFILE.format(driver="opencv", backend="onnx", path=path, grasp="", lift=""))
    node = start_node(profile)
    assert node.wait_exit(30.0) == EXIT_CONFIG_ERROR
    assert "was trained on views ['side', 'wrist'], reward.views are ['wrist', 'side']" in node.output
