"""Host a profile's simulated world (``simulation.world``): its cameras, success signals and services.

Cameras whose driver is ``sim`` are rendered here and published exactly as the camera node
publishes real ones. A simulated camera renders ``simulation.render_width`` x ``render_height``
pixels with the real camera's vertical field of view and stands for the policy view's crop, so its
whole image is resized to the policy view (the profile's crop is in the real camera's pixels).
Every world also serves ``sim/reset_scene`` and reports on /diagnostics (``pld/sim/<world>``).

- ``franka_pick_cube``: franky-sim serves the arm at the franky arm's host, so the arm driver
  connects through franky as to the real robot; ``sim/success`` (std_msgs/Bool) at the control rate.
- ``yam_gpu_insertion``: kinematic; it follows the control arm's ``<arm>/state`` (the arm driver's
  i2rt sim robot) and publishes ``sim/stage_success`` (one privileged score per classifier head)
  at the control rate and ``stage/failure`` (std_msgs/String, the reason: the supervisor's failure
  detector input) whenever the card is lost;
  ``sim/inject_fault`` drops or knocks the card, or stalls the stand-in policy. It can also stand
  in for the base VLA: its scripted expert answers openpi requests on the port of ``policies.base.uri`` (see
  :func:`serves_base_policy` for when, :mod:`pld_ros.sim.yam_gpu_insertion_session` for how).
"""

from __future__ import annotations

import ipaddress
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol
from urllib.parse import urlsplit

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node
from std_msgs.msg import Bool, String

from pld_msgs.msg import RobotState, SuccessScores
from pld_msgs.srv import InjectFault, ResetScene
from pld_ros.nodes.camera_publisher import CameraPublisher
from pld_ros.nodes.diagnostics import MetricTopics, diagnostics_publisher, publish_status
from pld_ros.nodes.heartbeat import start_heartbeat
from pld_ros.nodes.runner import NodeConfigError, control_arm, load_node_profile, run_node
from pld_ros.policies.openpi_server import OpenpiServer
from pld_ros.profile import Camera, FrankyArm, I2rtArm, Profile
from pld_ros.sim import franka_pick_cube, yam_gpu_insertion
from pld_ros.sim.franka_pick_cube import FrankaPickCubeWorld
from pld_ros.sim.yam_gpu_insertion import YamGpuInsertionWorld
from pld_ros.sim.yam_gpu_insertion_session import YamGpuInsertionSession, scores, stage_behaviours

DIAGNOSTICS_PERIOD = 1.0
"""s between two /diagnostics reports."""
SLOW_FRACTION = 0.5
"""A measured real-time factor below this fraction of the target is reported as a warning."""
STATE_TIMEOUT = 1.0
"""s without the control arm's state after which the YAM world reports a warning (it stands still)."""


class RenderedWorld(Protocol):
    """What the cameras need of a world."""

    width: int
    height: int

    def render(self, camera: str) -> np.ndarray: ...

    def intrinsics(self, camera: str) -> tuple[float, float, float, float]: ...


@dataclass(frozen=True)
class Status:
    """One world's diagnostics status, before the cameras' figures are added."""

    level: bytes
    hardware_id: str
    message: str
    values: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    """The world's numbers for rqt_plot (``sim/metrics/<key>``)."""


class WorldHost(Protocol):
    """One world in the node: it makes its own topics and services in ``__init__``."""

    @property
    def world(self) -> RenderedWorld: ...

    @property
    def cameras(self) -> tuple[str, ...]:
        """The camera names the world renders."""
        ...

    def status(self) -> Status: ...

    def close(self) -> None: ...


class Cameras:
    """Renders each sim camera at its fps and publishes it as the camera node would."""

    def __init__(self, node: Node, cameras: Mapping[str, Camera], world: RenderedWorld) -> None:
        self._node = node
        self._world = world
        # Per camera, over the current diagnostics period: seconds spent rendering, frames.
        self._render_seconds = dict.fromkeys(cameras, 0.0)
        self._frames = dict.fromkeys(cameras, 0)
        self._period_start = time.monotonic()
        for name, camera in cameras.items():
            publisher = CameraPublisher(node, name, self._rendered(camera), world.intrinsics(name))
            node.create_timer(1.0 / camera.fps, partial(self._capture, name, publisher))

    def _rendered(self, camera: Camera) -> Camera:
        # What is published: the render, whole, resized to the policy view.
        view = camera.policy_view.model_copy(update={"crop": None})
        return camera.model_copy(
            update={"width": self._world.width, "height": self._world.height, "policy_view": view}
        )

    def _capture(self, name: str, publisher: CameraPublisher) -> None:
        stamp = self._node.get_clock().now().to_msg()
        start = time.perf_counter()
        frame = self._world.render(name)
        self._render_seconds[name] += time.perf_counter() - start
        self._frames[name] += 1
        # SIGINT / SIGTERM shut the context down from another thread, possibly while rendering.
        if self._node.context.ok():
            publisher.publish(frame, stamp)

    def values(self) -> dict[str, float]:
        """Mean render time (ms) and frame rate of each camera since the last call."""
        now = time.monotonic()
        elapsed, self._period_start = now - self._period_start, now
        values = {}
        for name, frames in self._frames.items():
            values[f"render_ms/{name}"] = (
                1e3 * self._render_seconds[name] / frames if frames else float("nan")
            )
            values[f"fps/{name}"] = frames / elapsed
            self._render_seconds[name], self._frames[name] = 0.0, 0
        return values


class FrankaPickCubeHost:
    """franky-sim's FR3 with a cube; ``sim/success`` is "the cube is lifted"."""

    cameras = tuple(franka_pick_cube.CAMERAS)

    def __init__(self, node: Node, profile: Profile) -> None:
        simulation = profile.simulation
        assert simulation is not None
        arms = [arm for arm in profile.arms.values() if isinstance(arm, FrankyArm)]
        if len(arms) != 1:
            raise NodeConfigError(
                f"{profile.name}: franka_pick_cube needs exactly one franky arm, got {len(arms)}"
            )
        self._node = node
        self.world = FrankaPickCubeWorld(
            arms[0].host,
            render_width=simulation.render_width,
            render_height=simulation.render_height,
            real_time_factor=simulation.real_time_factor,
            seed=simulation.seed,
            initial_joints=arms[0].home_joints,
        )
        try:
            self.world.start()
        except OSError as exc:
            raise NodeConfigError(str(exc)) from None
        node.get_logger().info(f"franka_pick_cube: franky-sim listening on {self.world.host}")
        self._success = node.create_publisher(Bool, "sim/success", 10)
        node.create_timer(1.0 / profile.supervisor.control_rate, self._publish_success)
        node.create_service(ResetScene, "sim/reset_scene", self._reset_scene)

    def _publish_success(self) -> None:
        self._success.publish(Bool(data=self.world.privileged_success()))

    def _reset_scene(self, request: ResetScene.Request, response: ResetScene.Response) -> ResetScene.Response:
        pose = self.world.reset_scene(randomize=bool(request.randomize), seed=int(request.seed) or None)
        x, y, _ = pose.position
        response.success = True
        response.message = f"cube at x={x:.3f} y={y:.3f} m"
        self._node.get_logger().info(f"scene reset: {response.message}")
        return response

    def status(self) -> Status:
        if not self.world.physics_alive:
            # Without physics the arm driver times out and the scene freezes: stop the graph.
            raise RuntimeError("franky-sim's physics thread stopped")
        rtf = self.world.real_time_factor()
        target = self.world.target_real_time_factor
        slow = rtf < SLOW_FRACTION * target
        return Status(
            level=DiagnosticStatus.WARN if slow else DiagnosticStatus.OK,
            hardware_id=f"franky-sim@{self.world.host}",
            message=f"physics at {rtf:.2f}x real time" + (" (slow)" if slow else ""),
            values={
                "real_time_factor": f"{rtf:.3f}",
                "target_real_time_factor": f"{target:.3f}",
                "cube_lift": f"{self.world.cube_lift():.4f}",
            },
            metrics={"real_time_factor": rtf},
        )

    def close(self) -> None:
        self.world.stop()


def serves_base_policy(profile: Profile) -> bool:
    """Whether the YAM world stands in for the base policy's openpi server.

    ``simulation.policy_server`` decides when the profile has it (true / false); otherwise the
    world serves when the base policy is ``openpi`` at a loopback address (``localhost``,
    127.0.0.0/8, ``::1``): in a simulated variant no VLA runs there.
    """
    simulation = profile.simulation
    assert simulation is not None
    # Read defensively: the field is new and older profile models lack it.
    explicit = getattr(simulation, "policy_server", None)
    if explicit is not None:
        return bool(explicit)
    base = profile.policies.base if profile.policies is not None else None
    if base is None or base.backend != "openpi" or base.uri is None:
        return False
    host = urlsplit(base.uri).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class YamGpuInsertionHost:
    """The kinematic YAM world following the control arm's state, with the expert as a policy."""

    cameras = tuple(yam_gpu_insertion.CAMERAS)

    def __init__(self, node: Node, profile: Profile) -> None:
        simulation = profile.simulation
        assert simulation is not None
        self._node = node
        self._arm = control_arm(profile)
        arm = profile.arms[self._arm]
        if not isinstance(arm, I2rtArm) or arm.gripper != "linear_4310":
            raise NodeConfigError(
                f"{profile.name}: yam_gpu_insertion needs the control arm {self._arm!r} to be an i2rt "
                "arm with the linear_4310 gripper (the world's finger geometry)"
            )
        try:
            behaviours = (
                stage_behaviours(profile.reward.stages, profile.policies.base.prompt)
                if profile.reward is not None and profile.policies is not None
                else {}
            )
        except ValueError as exc:
            raise NodeConfigError(f"{profile.name}: {exc}") from None
        base = profile.policies.base if profile.policies is not None else None
        self.world = YamGpuInsertionWorld(
            render_width=simulation.render_width,
            render_height=simulation.render_height,
            seed=simulation.seed,
        )
        self.session = YamGpuInsertionSession(
            self.world, behaviours, horizon=base.chunk_horizon if base is not None else 1
        )
        self.server: OpenpiServer | None = None
        if serves_base_policy(profile):
            self.server = self._serve(profile)
        self._states = 0
        self._skipped_states = 0
        self._last_state = time.monotonic()
        self._failures = 0
        self._failure = node.create_publisher(String, "stage/failure", 10)
        self._stage_success = node.create_publisher(SuccessScores, "sim/stage_success", 10)
        node.create_subscription(RobotState, f"{self._arm}/state", self._on_state, 10)
        node.create_timer(1.0 / profile.supervisor.control_rate, self._publish_stage_success)
        node.create_service(ResetScene, "sim/reset_scene", self._reset_scene)
        node.create_service(InjectFault, "sim/inject_fault", self._inject_fault)
        serving = f", base policy served at {self.server.uri}" if self.server is not None else ""
        node.get_logger().info(f"yam_gpu_insertion: following {self._arm}/state{serving}")

    def _serve(self, profile: Profile) -> OpenpiServer:
        if (
            profile.policies is None
            or profile.policies.base.backend != "openpi"
            or not profile.policies.base.uri
        ):
            raise NodeConfigError(
                f"{profile.name}: simulation.policy_server needs an openpi base policy with a uri to serve at"
            )
        base = profile.policies.base
        if not self.session.behaviours:
            raise NodeConfigError(
                f"{profile.name}: the stand-in base policy answers by stage prompt: "
                "the profile needs reward.stages"
            )
        uri = urlsplit(base.uri)
        if uri.scheme != "ws" or not uri.hostname:
            raise NodeConfigError(
                f"{profile.name}: policies.base.uri {base.uri!r}: can only serve ws://host:port"
            )
        server = OpenpiServer(
            partial(self.session.answer, keys=base.openpi),
            host=uri.hostname,
            port=uri.port or 80,
            metadata={"policy": "yam_gpu_insertion_expert", "prompts": list(self.session.behaviours)},
        )
        try:
            return server.start()
        except OSError as exc:
            raise NodeConfigError(
                f"{profile.name}: cannot serve the base policy at policies.base.uri {base.uri}: {exc}"
            ) from None

    def _on_state(self, state: RobotState) -> None:
        joints = state.joints.position
        if len(joints) != len(yam_gpu_insertion.READY_JOINTS):
            # A driver that has lost its arm publishes states without joints.
            self._skipped_states += 1
            return
        self._states += 1
        self._last_state = time.monotonic()
        lost = self.session.update(np.asarray(joints, dtype=np.float64), float(state.gripper_closure))
        if lost is not None:
            self._report_failure(lost)

    def _report_failure(self, reason: str) -> None:
        self._failures += 1
        self._node.get_logger().warning(reason)
        self._failure.publish(String(data=reason))

    def _publish_stage_success(self) -> None:
        message = SuccessScores(probabilities=scores(self.session.signals()), privileged=True)
        message.header.stamp = self._node.get_clock().now().to_msg()
        self._stage_success.publish(message)

    def _reset_scene(self, request: ResetScene.Request, response: ResetScene.Response) -> ResetScene.Response:
        pose = self.session.reset_scene(randomize=bool(request.randomize), seed=int(request.seed) or None)
        x, y, _ = pose.position
        response.success = True
        response.message = f"card home at x={x:.3f} y={y:.3f} m"
        self._node.get_logger().info(f"scene reset: {response.message}")
        return response

    def _inject_fault(
        self, request: InjectFault.Request, response: InjectFault.Response
    ) -> InjectFault.Response:
        response.success, response.message = self.session.inject(str(request.fault))
        if response.success:
            self._report_failure(response.message)
        return response

    def status(self) -> Status:
        values = self.session.status()
        values.update(
            arm_states=str(self._states),
            arm_states_without_joints=str(self._skipped_states),
            failures=str(self._failures),
        )
        if self.server is not None:
            values.update(
                policy_answered=str(self.server.answered),
                policy_failed=str(self.server.failed),
                policy_last_error=self.server.last_error,
            )
        silent = time.monotonic() - self._last_state
        if silent > STATE_TIMEOUT:
            level, message = DiagnosticStatus.WARN, f"no {self._arm}/state for {silent:.1f} s"
        elif values["stuck"] == "True":
            level, message = DiagnosticStatus.WARN, "the card cannot be picked up: a scene reset is needed"
        else:
            level, message = DiagnosticStatus.OK, f"following {self._arm}/state"
        return Status(
            level=level,
            hardware_id=f"i2rt-sim:{self._arm}",
            message=message,
            values=values,
            metrics={"failures": self._failures},
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.world.close()


HOSTS: dict[str, type[FrankaPickCubeHost] | type[YamGpuInsertionHost]] = {
    "franka_pick_cube": FrankaPickCubeHost,
    "yam_gpu_insertion": YamGpuInsertionHost,
}
"""The worlds this node hosts, by ``simulation.world``."""


class SimWorldNode(Node):
    def __init__(self) -> None:
        super().__init__("sim_world")
        profile = load_node_profile(self)
        name = str(self.get_parameter("profile").value)
        simulation = profile.simulation
        if simulation is None:
            raise NodeConfigError(f"{name}: no 'simulation' section: this profile drives real hardware")
        host_type = HOSTS.get(simulation.world)
        if host_type is None:
            raise NodeConfigError(f"{name}: world {simulation.world!r} is not implemented by sim_world")
        cameras = {name: camera for name, camera in profile.cameras.items() if camera.driver == "sim"}
        unknown = sorted(set(cameras) - set(host_type.cameras))
        if unknown:
            raise NodeConfigError(
                f"{name}: sim camera(s) {', '.join(unknown)} not in {simulation.world} "
                f"(it has {', '.join(host_type.cameras)})"
            )
        self._world_name = simulation.world
        self._host: WorldHost = host_type(self, profile)
        self._cameras = Cameras(self, cameras, self._host.world)
        self.get_logger().info(
            f"{simulation.world}: cameras {', '.join(cameras) or 'none'} at "
            f"{self._host.world.width}x{self._host.world.height}"
        )
        self._diagnostics = diagnostics_publisher(self)
        self._metrics = MetricTopics(self, "sim")
        self.create_timer(DIAGNOSTICS_PERIOD, self._report)
        self._heartbeat = start_heartbeat(self)

    def _report(self) -> None:
        status = self._host.status()
        cameras = self._cameras.values()
        publish_status(
            self,
            self._diagnostics,
            level=status.level,
            name=f"pld/sim/{self._world_name}",
            hardware_id=status.hardware_id,
            message=status.message,
            values={**status.values, **{key: f"{value:.2f}" for key, value in cameras.items()}},
        )
        self._metrics.publish({**status.metrics, **cameras})

    def destroy_node(self) -> None:
        self._host.close()
        super().destroy_node()


def main() -> None:
    sys.exit(run_node(SimWorldNode))


if __name__ == "__main__":
    main()
