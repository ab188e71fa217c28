"""Teleop node: a human takes the arm over with the keyboard or a SpaceMouse (``pld teleop``).

At the control rate it reads the device and, while the human acts, publishes their step on
``<arm>/teleop`` (``DeltaPoseCommand``, source HUMAN) for the control arm. The residual node
forwards it as the arm command, so it passes the arm driver's safety layer and is recorded as a
HUMAN step; when the human stops, the policies get the arm back after ``teleop.hold_time``.

The gripper the human holds starts from the arm's measured closure (``<arm>/state``), so input is
ignored until the arm has reported once.

Parameters:

- ``profile``: the profile file; the ``teleop`` section holds the speeds, deadband and hold time.
- ``device``: ``keyboard``, ``spacemouse``, or ``sim`` (a SpaceMouse twin that plays
  :data:`pld_ros.drivers.spacemouse.SIM_SCRIPT`: for tests and demos without a device);
  empty (the default) takes ``teleop.device`` from the profile.

The keyboard needs the terminal the user runs it in, so ``pld teleop`` runs this node in the
foreground of its own process, never under ``pld launch``.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Final

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node

from pld_msgs.msg import ActionSource, DeltaPoseCommand, RobotState
from pld_ros.core.rate import TickTiming
from pld_ros.core.teleop import (
    SPACEMOUSE_IDLE,
    HumanInput,
    KeyboardMapping,
    SpaceMouseMapping,
    SpaceMouseReading,
    TeleopCommand,
    TeleopSession,
    keymap_help,
)
from pld_ros.drivers.keyboard import KeyboardReader, NotATerminalError
from pld_ros.drivers.spacemouse import (
    SIM_SCRIPT,
    PySpaceMouse,
    ScriptedSpaceMouse,
    SpaceMouse,
    SpaceMouseError,
)
from pld_ros.nodes.diagnostics import MetricTopics, diagnostics_publisher, publish_status
from pld_ros.nodes.heartbeat import start_heartbeat
from pld_ros.nodes.runner import NodeConfigError, control_arm, fail_node, load_node_profile, run_node

DEVICES: Final = ("keyboard", "spacemouse", "sim")
REOPEN_PERIOD: Final = 1.0
"""Seconds between two attempts to reopen a SpaceMouse that failed (unplugged, say)."""
DIAGNOSTICS_PERIOD: Final = 1.0
"""s between two /diagnostics reports."""


class TeleopNode(Node):
    """Reads the human's device at the control rate; publishes their step while they act."""

    def __init__(self) -> None:
        super().__init__("teleop")
        profile = load_node_profile(self)
        device = str(self.declare_parameter("device", "").value)
        self.arm = control_arm(profile)
        self.device = device or profile.teleop.device
        if self.device not in DEVICES:
            raise NodeConfigError(f"parameter 'device' must be one of {', '.join(DEVICES)}, got {device!r}")
        rate = profile.supervisor.control_rate

        self._session = TeleopSession()
        self._state: RobotState | None = None
        self._keyboard: KeyboardReader | None = None
        self._keys = KeyboardMapping(profile.teleop, rate)
        self._mouse: SpaceMouse | None = None
        self._mouse_map = SpaceMouseMapping(profile.teleop, rate)
        self._mouse_failed_at: float | None = None
        self._mouse_error = ""
        self.counters = {"human_steps": 0, "device_failures": 0}
        # The device is read once per control tick; a slower read delays the human's step.
        self.timing = TickTiming(1.0 / rate)

        self._publisher = self.create_publisher(DeltaPoseCommand, f"{self.arm}/teleop", 10)
        self.create_subscription(RobotState, f"{self.arm}/state", self._on_state, 10)
        self._diag_pub = diagnostics_publisher(self)
        self._metrics = MetricTopics(self, "teleop")
        self.create_timer(1.0 / rate, self._tick)
        self.create_timer(DIAGNOSTICS_PERIOD, self._publish_diagnostics)
        start_heartbeat(self)
        # Last: nothing may fail after the terminal has been switched to cbreak mode.
        self._open_device()
        self.get_logger().info(
            f"{self.device} teleop of arm {self.arm!r} at {rate:g} Hz; waiting for {self.arm}/state"
        )

    def _open_device(self) -> None:
        if self.device == "keyboard":
            try:
                self._keyboard = KeyboardReader().__enter__()
            except NotATerminalError as exc:
                raise NodeConfigError(str(exc)) from None
            print(keymap_help(), flush=True)
            return
        self._mouse = PySpaceMouse() if self.device == "spacemouse" else ScriptedSpaceMouse(SIM_SCRIPT)
        try:
            self._mouse.open()
        except SpaceMouseError as exc:
            raise NodeConfigError(str(exc)) from None

    def _on_state(self, message: RobotState) -> None:
        if self._state is None:
            self.get_logger().info(f"arm {self.arm!r} reports: the human can take over")
            if self._keyboard is not None:
                self._keyboard.discard_pending()  # keys typed before the arm was there are stale
        self._state = message

    def _tick(self) -> None:
        state = self._state
        if state is None:
            return
        now = time.monotonic()
        started = time.perf_counter()
        human = self._read(now)
        was_engaged = self._session.engaged
        command = self._session.step(human, float(state.gripper_closure), bool(state.gripper_grasped))
        if command is not None:
            self._publish(command, state.header.frame_id)
            self.counters["human_steps"] += 1
        if self._session.engaged != was_engaged:
            self.get_logger().info("human took over" if self._session.engaged else "human let go")
        self.timing.record(now, time.perf_counter() - started)

    def _read(self, now: float) -> HumanInput:
        if self._keyboard is not None:
            try:
                keys = self._keyboard.read_keys()
            except EOFError as exc:
                fail_node(self, str(exc))
                return self._keys.tick(now)
            for key in keys:
                self._keys.press(key, now)
            return self._keys.tick(now)
        return self._mouse_map.map(self._read_mouse(now))

    def _read_mouse(self, now: float) -> SpaceMouseReading:
        assert self._mouse is not None
        if self._mouse_failed_at is not None:
            if now - self._mouse_failed_at < REOPEN_PERIOD:
                return SPACEMOUSE_IDLE
            try:
                self._mouse.open()
            except SpaceMouseError as exc:
                self._mouse_failed_at = now
                self._mouse_error = str(exc)
                self.get_logger().error(str(exc), throttle_duration_sec=10.0)
                return SPACEMOUSE_IDLE
            self._mouse_failed_at, self._mouse_error = None, ""
            self.get_logger().info("SpaceMouse reopened")
        try:
            return self._mouse.read()
        except (SpaceMouseError, ValueError) as exc:
            # An unplugged device is a fault, not a crash: rest, and try to reopen it.
            self.get_logger().error(f"{exc}; retrying every {REOPEN_PERIOD:g} s")
            self._mouse.close()
            self._mouse_failed_at, self._mouse_error = now, str(exc)
            self.counters["device_failures"] += 1
            return SPACEMOUSE_IDLE

    def _publish(self, command: TeleopCommand, frame_id: str) -> None:
        message = DeltaPoseCommand(gripper=command.gripper, base_action_age=math.nan)
        message.header.stamp = self.get_clock().now().to_msg()
        message.header.frame_id = frame_id
        message.translation.x, message.translation.y, message.translation.z = command.translation
        message.rotation.x, message.rotation.y, message.rotation.z = command.rotation
        message.source = ActionSource(value=ActionSource.HUMAN)
        self._publisher.publish(message)

    def _publish_diagnostics(self) -> None:
        timing = self.timing.stats()
        if self._mouse_error:
            level, message = DiagnosticStatus.ERROR, f"{self.device}: {self._mouse_error}"
        elif self._state is None:
            level, message = DiagnosticStatus.WARN, f"no {self.arm}/state yet: input is ignored"
        else:
            level, message = DiagnosticStatus.OK, "human acting" if self._session.engaged else "ready"
        publish_status(
            self,
            self._diag_pub,
            level=level,
            name=f"pld/teleop/{self.arm}",
            hardware_id=self.device,
            message=message,
            values={
                "device": self.device,
                "engaged": str(self._session.engaged).lower(),
                "device_error": self._mouse_error,
                **self.counters,
                **timing.values(),
            },
        )
        self._metrics.publish(
            {"engaged": float(self._session.engaged), "tick_latency_p99_ms": timing.latency_p99 * 1e3}
        )

    def destroy_node(self) -> None:
        # The terminal must come back usable however the node stops.
        if self._keyboard is not None:
            self._keyboard.close()
        if self._mouse is not None:
            self._mouse.close()
        super().destroy_node()


def main() -> None:
    sys.exit(run_node(TeleopNode))


if __name__ == "__main__":
    main()
