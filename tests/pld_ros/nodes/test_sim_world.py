"""The sim_world node in its own process, seen over DDS and through franky as the other nodes see it."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import franky
import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Bool, Header

from pld_msgs.srv import ResetScene
from pld_ros.graph import HEARTBEAT_TOPIC
from pld_ros.nodes.camera_publisher import SENSOR_QOS
from pld_ros.profile import FrankyArm, load_profile
from pld_ros.sim.franka_pick_cube import CUBE_AREA
from tests.conftest import CONFIG_DIR, FIXTURES
from tests.franka_pick import pick_up
from tests.processes import Watched
from tests.ros_probe import RosProbe

pytestmark = pytest.mark.ros

PROFILE = FIXTURES / "profiles" / "franka_pick_cube_world_sim.yaml"
NODE = (sys.executable, "-m", "pld_ros.nodes.sim_world", "--ros-args", "-p")
VIEWS = ("wrist", "side")


class Probe(RosProbe):
    """Records what sim_world publishes and calls its service."""

    def __init__(self) -> None:
        super().__init__("sim_world_probe")
        self.views: dict[str, Any] = {}
        self.info: dict[str, Any] = {}
        self.success: list[bool] = []
        self.beats: set[str] = set()
        self.diagnostics: list[Any] = []
        for name in VIEWS:
            prefix = f"/cameras/{name}"
            self.node.create_subscription(
                Image, f"{prefix}/policy_view", self._keep(self.views, name), SENSOR_QOS
            )
            self.node.create_subscription(
                CameraInfo, f"{prefix}/camera_info", self._keep(self.info, name), SENSOR_QOS
            )
        self.node.create_subscription(Bool, "/sim/success", lambda m: self.success.append(m.data), 50)
        self.node.create_subscription(Header, HEARTBEAT_TOPIC, lambda m: self.beats.add(m.frame_id), 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.reset: Any = self.node.create_client(ResetScene, "/sim/reset_scene")

    @staticmethod
    def _keep(latest: dict[str, Any], name: str) -> Callable[[Any], None]:
        return lambda msg: latest.__setitem__(name, msg)

    def _on_diagnostics(self, msg: Any) -> None:
        self.diagnostics.extend(s for s in msg.status if s.name == "pld/sim/franka_pick_cube")

    def reset_scene(self, randomize: bool, seed: int) -> Any:
        return self.call(self.reset, ResetScene.Request(randomize=randomize, seed=seed))


@pytest.fixture
def probe() -> Iterator[Probe]:
    with Probe() as p:
        yield p


def assert_policy_views(views: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    """What a simulated world owes the policies, by view name: a 128x128 rgb8 image that is not
    blank, camera info in the camera's optical frame, and a wrist view that differs from the side's."""
    for name in VIEWS:
        view = views[name]
        assert (view.width, view.height, view.encoding) == (128, 128, "rgb8")
        pixels = np.frombuffer(bytes(view.data), dtype=np.uint8).reshape(128, 128, 3)
        assert pixels.std() > 10, f"the {name} view is blank"
        assert info[name].header.frame_id == f"{name}_camera_optical_frame"
    assert views["wrist"].data != views["side"].data


def test_publishes_views_and_success_serves_reset_and_hosts_the_arm(probe: Probe) -> None:
    arm = load_profile(PROFILE).arms["arm"]
    assert isinstance(arm, FrankyArm)
    host = arm.host
    with Watched([*NODE, f"profile:={PROFILE}"]) as world:
        probe.spin_until(
            lambda: len(probe.views) == len(VIEWS) and len(probe.info) == len(VIEWS) and bool(probe.success),
            30,
            f"policy views, camera info and success (so far: {world.output})",
        )
        assert_policy_views(probe.views, probe.info)
        for info in probe.info.values():
            assert (info.width, info.height) == (128, 128) and info.k[2] == info.k[5] == 63.5
        assert not any(probe.success), "the cube starts on the table"

        # The arm driver's view: franky-sim at the profile's address, the arm at the profile's home.
        robot = franky.Robot(host, realtime_config=franky.RealtimeConfig.Ignore)
        robot.relative_dynamics_factor = 0.3
        np.testing.assert_allclose(robot.current_joint_state.position, arm.home_joints, atol=0.02)

        # A seeded reset is the world's layout for that seed.
        response = probe.reset_scene(randomize=True, seed=5)
        assert response.success
        x, y, yaw = CUBE_AREA.sample(np.random.default_rng(5))
        assert response.message == f"cube at x={x:.3f} y={y:.3f} m"

        # A perfect policy lifts the cube: success turns true on the topic.
        pick_up(robot, franky.Gripper(host), x, y, yaw)
        probe.success.clear()
        probe.spin_until(lambda: bool(probe.success) and probe.success[-1], 5, "success after the lift")
        response = probe.reset_scene(randomize=False, seed=0)
        assert response.success and response.message == f"cube at x={CUBE_AREA.centre[0]:.3f} y=0.000 m"
        probe.success.clear()
        probe.spin_until(
            lambda: len(probe.success) > 2 and not probe.success[-1], 5, "no success after reset"
        )

        probe.spin_until(lambda: "/sim_world" in probe.beats, 5, "a heartbeat")
        probe.spin_until(lambda: bool(probe.diagnostics), 5, "diagnostics")
        values = {kv.key: kv.value for kv in probe.diagnostics[-1].values}
        assert float(values["real_time_factor"]) > 0.1
        assert 0 < float(values["render_ms/wrist"]) < 100 and float(values["fps/side"]) > 5
        del robot

        world.stop_cleanly()


def test_a_profile_without_simulation_is_refused() -> None:
    with Watched([*NODE, f"profile:={CONFIG_DIR / 'franka_pick_cube.yaml'}"]) as node:
        code = node.wait_exit(timeout=30)
    assert code == 2
    assert re.search(r"franka_pick_cube\.yaml: no 'simulation' section", node.output)
