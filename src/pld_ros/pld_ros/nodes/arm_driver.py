"""Arm driver node: delta-pose commands in, robot state and diagnostics out, at the control rate.

The control loop runs in its own thread on absolute deadlines (see :mod:`pld_ros.core.rate`)
rather than on an rclpy timer, so executor load (subscriptions, services) cannot delay a tick.
In simulation the deadlines are on the simulator's clock (``simulation.paced_by_simulated_time``),
and every node downstream, ticked by this node's state, follows that pace.
Each tick takes the newest command that arrived since the previous tick; older ones are dropped
(and counted), since a delta is only meaningful for the tick it was computed for.
``<arm>/home`` (std_srvs/Trigger) moves the arm to the profile's ``home_joints`` in joint space and
answers once it is there: the supervisor's reset starts with it, since Cartesian targets leave the
arm configuration free to drift between episodes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import Pose as PoseMsg
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from pld_msgs.msg import DeltaPoseCommand, RobotState
from pld_msgs.srv import EStop
from pld_ros.core.arm_controller import ArmController, ArmMode, TickReport
from pld_ros.core.rate import RateKeeper, RobotClock, TickTiming
from pld_ros.core.safety import DeltaCommand
from pld_ros.core.spatial import Pose
from pld_ros.drivers.arm import ArmBackend
from pld_ros.nodes.diagnostics import MetricTopics, diagnostics_publisher, publish_status
from pld_ros.nodes.heartbeat import start_heartbeat
from pld_ros.nodes.runner import NodeConfigError, fail_node, load_node_profile, run_node
from pld_ros.profile import FrankyArm, Profile

HOMING_TIMEOUT = 30.0
"""s the home service waits for the control loop: longer than a backend's joint move may take
(franky's bound is 20 s)."""


@dataclass
class _HomingCall:
    """One call of the home service, answered by the control loop (or by the node going down)."""

    done: threading.Event = field(default_factory=threading.Event)
    success: bool = False
    message: str = ""

    def answer(self, success: bool, message: str) -> None:
        self.success, self.message = success, message
        self.done.set()


def make_backend(profile: Profile, arm_name: str) -> ArmBackend:
    arm = profile.arms[arm_name]
    if isinstance(arm, FrankyArm):
        from pld_ros.drivers.franky_arm import FrankyBackend

        return FrankyBackend(arm)
    from pld_ros.drivers.i2rt_arm import I2rtArmBackend

    return I2rtArmBackend(arm, sim=profile.simulated)


def pose_message(pose: Pose) -> PoseMsg:
    message = PoseMsg()
    message.position.x, message.position.y, message.position.z = (float(v) for v in pose.position)
    (
        message.orientation.x,
        message.orientation.y,
        message.orientation.z,
        message.orientation.w,
    ) = (float(v) for v in pose.orientation)
    return message


class ArmDriverNode(Node):
    def __init__(self) -> None:
        super().__init__("arm_driver")
        profile = load_node_profile(self)
        self.arm_name = str(self.declare_parameter("arm", "arm").value)
        if self.arm_name not in profile.arms:
            raise NodeConfigError(
                f"profile {profile.name!r} has no arm {self.arm_name!r} (arms: {list(profile.arms)})"
            )
        arm = profile.arms[self.arm_name]
        self.backend = make_backend(profile, self.arm_name)
        self.controller = ArmController(self.backend, arm.safety, recover_errors=arm.recover_errors)
        if profile.simulation is not None and profile.simulation.paced_by_simulated_time:
            clock = RobotClock(self.backend.robot_time)
            self.rate = RateKeeper(profile.supervisor.control_rate, clock=clock.now, sleep=clock.sleep)
        else:
            self.rate = RateKeeper(profile.supervisor.control_rate)
        # A tick's work (the robot call and the state) must fit its period, or the next one is late.
        self.timing = TickTiming(self.rate.period)
        self.realtime_priority = arm.control_priority
        # Two arms share one TF tree: their frames and joints carry the arm's name, as
        # pld_ros.robot_description.load_urdf(model, prefix) names them.
        self.frame_prefix = f"{self.arm_name}_" if len(profile.arms) > 1 else ""
        self.base_frame = self.frame_prefix + self.backend.base_frame

        self.home_joints = tuple(arm.home_joints)
        self._lock = threading.Lock()
        self._pending: DeltaCommand | None = None
        self._homing: _HomingCall | None = None
        """Left by the home service for the control loop, which answers it once the move ended."""
        self.counters = {"commands": 0, "dropped_stale": 0, "rejected_frame": 0}
        self._last_report: TickReport | None = None
        self._stop = threading.Event()

        prefix = self.arm_name
        self.create_subscription(DeltaPoseCommand, f"{prefix}/command", self._on_command, 10)
        self.create_subscription(Bool, "/pld/estop", self._on_estop_topic, 10)
        self.create_service(EStop, f"{prefix}/estop", self._on_estop_service)
        # The home service waits for the motion: in a group of its own, on a thread of its own
        # (main() spins two), so commands and the e-stop topic are served meanwhile.
        self.create_service(
            Trigger, f"{prefix}/home", self._on_home, callback_group=MutuallyExclusiveCallbackGroup()
        )
        self._state_pub = self.create_publisher(RobotState, f"{prefix}/state", 10)
        self._joints_pub = self.create_publisher(JointState, f"{prefix}/joint_states", 10)
        self._diag_pub = diagnostics_publisher(self)
        self._metrics = MetricTopics(self, prefix)
        self.create_timer(1.0, self._publish_diagnostics)
        start_heartbeat(self)

        self._thread = threading.Thread(target=self._control_loop, name="control", daemon=True)
        self._thread.start()

    # -- inputs --------------------------------------------------------------------------------

    def _on_command(self, msg: DeltaPoseCommand) -> None:
        if msg.header.frame_id not in ("", self.base_frame):
            self.counters["rejected_frame"] += 1
            self.get_logger().warning(
                f"command in frame {msg.header.frame_id!r} rejected: expected {self.base_frame!r}",
                throttle_duration_sec=5.0,
            )
            return
        command = DeltaCommand(
            np.array([msg.translation.x, msg.translation.y, msg.translation.z]),
            np.array([msg.rotation.x, msg.rotation.y, msg.rotation.z]),
            float(msg.gripper),
        )
        with self._lock:
            if self._pending is not None:
                self.counters["dropped_stale"] += 1
            self._pending = command
            self.counters["commands"] += 1

    def _on_estop_topic(self, msg: Bool) -> None:
        if msg.data:
            self.controller.engage_estop("/pld/estop")
            self.get_logger().error("e-stop engaged from /pld/estop")

    def _on_estop_service(self, request: EStop.Request, response: EStop.Response) -> EStop.Response:
        if request.engage:
            self.controller.engage_estop(request.reason or "service")
            self.get_logger().error(f"e-stop engaged: {request.reason}")
            response.success, response.message = True, "e-stop engaged"
        else:
            response.success, response.message = self.controller.clear_estop()
            self.get_logger().warning(response.message)
        response.engaged = self.controller.safety.estop_reason is not None
        return response

    def _on_home(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        call = _HomingCall()
        with self._lock:
            if self._stop.is_set():
                call.answer(False, "the arm driver is shutting down")
            else:
                self._homing = call
        if call.done.wait(HOMING_TIMEOUT):
            response.success, response.message = call.success, call.message
        else:
            response.success, response.message = (
                False,
                f"no answer from the control loop in {HOMING_TIMEOUT:.0f} s",
            )
        return response

    # -- the loop ------------------------------------------------------------------------------

    def _control_loop(self) -> None:
        self._raise_priority()
        try:
            while not self._stop.is_set():
                now = self.rate.wait()
                started = time.perf_counter()
                # The state describes this instant, not the moment it is published.
                stamp = self.get_clock().now().to_msg()
                with self._lock:
                    command, self._pending = self._pending, None
                    homing, self._homing = self._homing, None
                    if homing is not None and command is not None:
                        # A delta computed before the move means nothing after it.
                        self.counters["dropped_stale"] += 1
                if homing is not None:
                    report = self._home(now, homing)
                    self._last_report = report
                    self._publish_state(report, self.get_clock().now().to_msg())
                    continue
                report = self.controller.tick(command, now)
                self._last_report = report
                for event in report.events:
                    if event in ("connected", "recovered"):
                        self.get_logger().info(event)
                    else:
                        self.get_logger().error(event)
                self._publish_state(report, stamp)
                self.timing.record(now, time.perf_counter() - started)
        except Exception as exc:
            self.controller.close()
            if not self.context.ok():
                return  # shutting down: publishing failed because the context is already gone
            # A bug, not a fault: stop commanding and let the graph know.
            fail_node(self, f"control loop crashed: {type(exc).__name__}: {exc}")

    def _home(self, now: float, call: _HomingCall) -> TickReport:
        # The joint move blocks this loop for its length (libfranka and the i2rt driver run their
        # own control meanwhile): a deliberate pause, not missed ticks.
        homed, report = self.controller.home(self.home_joints, now)
        self.rate.restart()
        self.timing.restart()
        message = "; ".join(report.events) or report.error
        call.answer(homed, message)
        if homed:
            self.get_logger().info(f"homed to {list(self.home_joints)}")
        else:
            self.get_logger().error(f"homing failed: {message}")
        return report

    def _raise_priority(self) -> None:
        # Under load, a normal-priority thread wakes late; SCHED_FIFO lets the control thread
        # preempt everything else on the machine except other real-time work.
        if self.realtime_priority <= 0:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.realtime_priority))
        except PermissionError:
            self.get_logger().warning(
                f"cannot set SCHED_FIFO priority {self.realtime_priority} (needs CAP_SYS_NICE or an rtprio "
                "limit, as libfranka does): the control loop runs at normal priority"
            )

    def _publish_state(self, report: TickReport, stamp: Time) -> None:
        message = RobotState(mode=int(report.mode), error=report.error)
        message.header.stamp = stamp
        message.header.frame_id = self.base_frame
        if report.target is not None:
            message.ee_target = pose_message(report.target)
        state = report.state
        if state is not None:
            joints = JointState(name=[self.frame_prefix + name for name in state.joint_names])
            joints.header.stamp = stamp
            joints.position = state.joint_positions.tolist()
            joints.velocity = state.joint_velocities.tolist()
            joints.effort = state.joint_efforts.tolist()
            message.joints = joints
            message.ee_pose = pose_message(state.ee_pose)
            message.gripper_width = state.gripper_width
            message.gripper_closure = state.gripper_closure
            message.gripper_grasped = state.gripper_grasped
            if report.mode is not ArmMode.DISCONNECTED:
                self._joints_pub.publish(joints)
        self._state_pub.publish(message)

    def _publish_diagnostics(self) -> None:
        report = self._last_report
        timing = self.timing.stats()
        safety = self.controller.safety.counters
        mode = report.mode if report is not None else ArmMode.DISCONNECTED
        level = {
            ArmMode.IDLE: DiagnosticStatus.OK,
            ArmMode.MOVING: DiagnosticStatus.OK,
            ArmMode.HOLDING: DiagnosticStatus.WARN,
        }.get(mode, DiagnosticStatus.ERROR)
        values = {
            "mode": mode.name,
            "error": report.error if report is not None else "",
            "estop": self.controller.safety.estop_reason or "",
            **timing.values(),
            "loop_missed_ticks": self.rate.missed,
            **self.counters,
            **self.controller.counters,
            **self.controller.backend.counters,
            **safety,
        }
        publish_status(
            self,
            self._diag_pub,
            level=level,
            name=f"pld/arm/{self.arm_name}",
            hardware_id=self.arm_name,
            message=mode.name.lower() + (f": {values['error']}" if values["error"] else ""),
            values=values,
        )
        self._metrics.publish(
            {
                "loop_period_p99_ms": timing.period_p99 * 1e3,
                "loop_period_max_ms": timing.period_max * 1e3,
                "tick_latency_p99_ms": timing.latency_p99 * 1e3,
                "loop_missed_ticks": self.rate.missed,
                "deadline_misses": timing.deadline_misses,
                "safety_interventions": sum(safety.values()),
            }
        )

    def destroy_node(self) -> None:
        # Stop commanding before the node goes: the loop thread must not outlive the backend.
        with self._lock:
            self._stop.set()
            unanswered, self._homing = self._homing, None
        self._thread.join(timeout=2.0)
        # A home call the loop never took must not hold the service's thread until its timeout.
        if unanswered is not None:
            unanswered.answer(False, "the arm driver is shutting down")
        self.controller.close()
        super().destroy_node()


def main() -> None:
    sys.exit(run_node(ArmDriverNode, threads=2))


if __name__ == "__main__":
    main()
