"""Host a profile's simulated world: the arm's franky-sim server, its cameras, its success signal.

The arm driver connects to the world through franky at the profile's arm host, as to the real
robot; cameras whose driver is ``sim`` are rendered here and published exactly as the camera node
publishes real ones. A simulated camera renders ``simulation.render_width`` x ``render_height``
pixels with the real camera's vertical field of view and stands for the policy view's crop, so its
whole image is resized to the policy view (the profile's crop is in the real camera's pixels).
"""

from __future__ import annotations

import sys
import time
from functools import partial

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from std_msgs.msg import Bool

from pld_msgs.srv import ResetScene
from pld_ros.nodes.camera_publisher import CameraPublisher
from pld_ros.nodes.heartbeat import start_heartbeat
from pld_ros.nodes.runner import NodeConfigError, load_node_profile, run_node
from pld_ros.profile import Camera, FrankyArm
from pld_ros.sim.franka_pick_cube import CAMERAS, FrankaPickCubeWorld

SUCCESS_RATE = 20.0
"""Hz of sim/success: the control rate, so the stage machine sees every tick."""
DIAGNOSTICS_PERIOD = 1.0
"""s between two /diagnostics reports."""
SLOW_FRACTION = 0.5
"""A measured real-time factor below this fraction of the target is reported as a warning."""


class SimWorldNode(Node):
    def __init__(self) -> None:
        super().__init__("sim_world")
        profile = load_node_profile(self)
        name = str(self.get_parameter("profile").value)
        simulation = profile.simulation
        if simulation is None:
            raise NodeConfigError(f"{name}: no 'simulation' section: this profile drives real hardware")
        if simulation.world != "franka_pick_cube":
            raise NodeConfigError(f"{name}: world {simulation.world!r} is not implemented by sim_world")
        arms = [arm for arm in profile.arms.values() if isinstance(arm, FrankyArm)]
        if len(arms) != 1:
            raise NodeConfigError(f"{name}: franka_pick_cube needs exactly one franky arm, got {len(arms)}")
        cameras = {name: camera for name, camera in profile.cameras.items() if camera.driver == "sim"}
        unknown = sorted(set(cameras) - set(CAMERAS))
        if unknown:
            raise NodeConfigError(
                f"{name}: sim camera(s) {', '.join(unknown)} not in franka_pick_cube "
                f"(it has {', '.join(CAMERAS)})"
            )

        self._world = FrankaPickCubeWorld(
            arms[0].host,
            render_width=simulation.render_width,
            render_height=simulation.render_height,
            real_time_factor=simulation.real_time_factor,
            seed=simulation.seed,
            initial_joints=arms[0].home_joints,
        )
        try:
            self._world.start()
        except OSError as exc:
            raise NodeConfigError(str(exc)) from None
        self.get_logger().info(
            f"franka_pick_cube: franky-sim listening on {self._world.host}, "
            f"cameras {', '.join(cameras) or 'none'} at {self._world.width}x{self._world.height}"
        )

        # Per camera, over the current diagnostics period: seconds spent rendering, frames.
        self._render_seconds = dict.fromkeys(cameras, 0.0)
        self._frames = dict.fromkeys(cameras, 0)
        self._period_start = time.monotonic()
        for name, camera in cameras.items():
            publisher = CameraPublisher(self, name, self._rendered(camera), self._world.intrinsics(name))
            self.create_timer(1.0 / camera.fps, partial(self._capture, name, publisher))
        self._success = self.create_publisher(Bool, "sim/success", 10)
        self.create_timer(1.0 / SUCCESS_RATE, self._publish_success)
        self.create_service(ResetScene, "sim/reset_scene", self._reset_scene)
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(DIAGNOSTICS_PERIOD, self._report)
        self._heartbeat = start_heartbeat(self)

    def _rendered(self, camera: Camera) -> Camera:
        # What is published: the render, whole, resized to the policy view.
        view = camera.policy_view.model_copy(update={"crop": None})
        return camera.model_copy(
            update={"width": self._world.width, "height": self._world.height, "policy_view": view}
        )

    def _capture(self, name: str, publisher: CameraPublisher) -> None:
        stamp = self.get_clock().now().to_msg()
        start = time.perf_counter()
        frame = self._world.render(name)
        self._render_seconds[name] += time.perf_counter() - start
        self._frames[name] += 1
        # SIGINT / SIGTERM shut the context down from another thread, possibly while rendering.
        if self.context.ok():
            publisher.publish(frame, stamp)

    def _publish_success(self) -> None:
        self._success.publish(Bool(data=self._world.privileged_success()))

    def _reset_scene(self, request: ResetScene.Request, response: ResetScene.Response) -> ResetScene.Response:
        pose = self._world.reset_scene(randomize=bool(request.randomize), seed=int(request.seed) or None)
        x, y, _ = pose.position
        response.success = True
        response.message = f"cube at x={x:.3f} y={y:.3f} m"
        self.get_logger().info(f"scene reset: {response.message}")
        return response

    def _report(self) -> None:
        if not self._world.physics_alive:
            # Without physics the arm driver times out and the scene freezes: stop the graph.
            raise RuntimeError("franky-sim's physics thread stopped")
        rtf = self._world.real_time_factor()
        target = self._world.target_real_time_factor
        slow = rtf < SLOW_FRACTION * target
        values = [
            KeyValue(key="real_time_factor", value=f"{rtf:.3f}"),
            KeyValue(key="target_real_time_factor", value=f"{target:.3f}"),
            KeyValue(key="cube_lift", value=f"{self._world.cube_lift():.4f}"),
        ]
        now = time.monotonic()
        elapsed, self._period_start = now - self._period_start, now
        for name, frames in self._frames.items():
            mean_ms = 1e3 * self._render_seconds[name] / frames if frames else float("nan")
            values.append(KeyValue(key=f"render_ms/{name}", value=f"{mean_ms:.2f}"))
            values.append(KeyValue(key=f"fps/{name}", value=f"{frames / elapsed:.1f}"))
            self._render_seconds[name], self._frames[name] = 0.0, 0
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status.append(
            DiagnosticStatus(
                level=DiagnosticStatus.WARN if slow else DiagnosticStatus.OK,
                name="pld/sim/franka_pick_cube",
                hardware_id=f"franky-sim@{self._world.host}",
                message=f"physics at {rtf:.2f}x real time" + (" (slow)" if slow else ""),
                values=values,
            )
        )
        self._diagnostics.publish(array)

    def destroy_node(self) -> None:
        self._world.stop()
        super().destroy_node()


def main() -> None:
    sys.exit(run_node(SimWorldNode))


if __name__ == "__main__":
    main()
