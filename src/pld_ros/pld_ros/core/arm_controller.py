"""One control tick of one arm: safety filter, backend, and the handling of every fault.

Faults are normal events here. A lost connection closes the backend and retries at a fixed
interval; a robot error (a reflex, say) triggers automatic recovery when the profile allows it.
After any interruption -- start-up, hold, e-stop, recovery, reconnect -- the target restarts
from the measured pose, so the arm never jumps to a target integrated before the interruption.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import IntEnum

from pld_ros.core.safety import Decision, DeltaCommand, SafetyFilter
from pld_ros.core.spatial import Pose
from pld_ros.drivers.arm import ArmBackend, ArmFault, ArmState
from pld_ros.profile import SafetyLimits


class ArmMode(IntEnum):
    """Same values as the MODE_* constants of pld_msgs/RobotState."""

    IDLE = 0
    MOVING = 1
    HOLDING = 2
    ERROR = 3
    ESTOP = 4
    DISCONNECTED = 5


@dataclass(frozen=True)
class TickReport:
    mode: ArmMode
    state: ArmState | None
    """The latest measured state; None until the first successful read."""
    target: Pose | None
    gripper_target: float
    error: str
    events: list[str] = field(default_factory=list)
    """What changed this tick, in words, for the log."""


class ArmController:
    def __init__(
        self,
        backend: ArmBackend,
        limits: SafetyLimits,
        *,
        reconnect_interval: float = 1.0,
        recover_errors: bool = True,
    ) -> None:
        self.backend = backend
        self.safety = SafetyFilter(limits)
        self.counters: Counter[str] = Counter()
        self._reconnect_interval = reconnect_interval
        self._recover_errors = recover_errors
        self._connected = False
        self._next_connect = float("-inf")
        self._tracking = False
        self._ever_commanded = False
        self._state: ArmState | None = None
        self._error = ""
        self._mode = ArmMode.DISCONNECTED

    @property
    def mode(self) -> ArmMode:
        return self._mode

    def engage_estop(self, reason: str) -> None:
        """Latch the e-stop; the next tick stops the arm."""
        self.safety.engage_estop(reason)

    def clear_estop(self) -> tuple[bool, str]:
        """Clear the e-stop unless the arm is in a state where moving again is unsafe."""
        if self.safety.estop_reason is None:
            return True, "e-stop was not engaged"
        if self._mode in (ArmMode.ERROR, ArmMode.DISCONNECTED):
            return False, f"cannot clear while the arm is {self._mode.name.lower()}: {self._error}"
        self.safety.clear_estop()
        return True, "e-stop cleared"

    def tick(self, command: DeltaCommand | None, now: float) -> TickReport:
        events: list[str] = []
        if not self._connected and not self._connect(now, events):
            return self._report(ArmMode.DISCONNECTED, events)
        try:
            state = self.backend.read_state()
            self._state = state
            if state.error:
                raise ArmFault(state.error, connection_lost=False)
            mode = self._control(command, state, events)
        except ArmFault as fault:
            mode = self._on_fault(fault, now, events)
        return self._report(mode, events)

    def home(self, joints: tuple[float, ...], now: float) -> tuple[bool, TickReport]:
        """(blocking) Move to the joint configuration ``joints`` and stop there: a reset's homing,
        which brings back the arm configuration that Cartesian targets leave free. Refused under
        e-stop and while disconnected; a fault during the move is handled as in :meth:`tick`.
        Returns whether the arm got there, and the report (its events say why not)."""
        events: list[str] = []
        if self.safety.estop_reason is not None:
            events.append(f"homing refused: e-stop ({self.safety.estop_reason})")
            return False, self._report(ArmMode.ESTOP, events)
        if not self._connected:
            events.append("homing refused: not connected")
            return False, self._report(ArmMode.DISCONNECTED, events)
        try:
            self.backend.move_joints(joints)
            state = self.backend.read_state()
            if state.error:
                raise ArmFault(state.error, connection_lost=False)
        except ArmFault as fault:
            return False, self._report(self._on_fault(fault, now, events), events)
        self.counters["homings"] += 1
        self._state = state
        self._restart_from(state)
        events.append("homed")
        return True, self._report(ArmMode.HOLDING if self._ever_commanded else ArmMode.IDLE, events)

    def _connect(self, now: float, events: list[str]) -> bool:
        if now < self._next_connect:
            return False
        try:
            self.backend.connect()
            state = self.backend.read_state()
        except ArmFault as fault:
            self.backend.close()
            self._next_connect = now + self._reconnect_interval
            if str(fault) != self._error:
                events.append(f"connect failed: {fault}")
            self._error = str(fault)
            return False
        self._connected = True
        self._ever_commanded = False  # a fresh connection is idle until the first command
        self.counters["connects"] += 1
        self._state = state
        self._error = ""
        self._restart_from(state)
        events.append("connected")
        return True

    def _restart_from(self, state: ArmState) -> None:
        self.safety.reset(state.ee_pose, state.gripper_closure)
        self._tracking = False

    def _control(self, command: DeltaCommand | None, state: ArmState, events: list[str]) -> ArmMode:
        if command is not None and not self._tracking and self.safety.estop_reason is None:
            # Resume from where the arm is, not from a target integrated before the pause.
            self.safety.reset(state.ee_pose, state.gripper_closure)
        output = self.safety.step(command, state.ee_pose)
        if output.decision is Decision.MOVE:
            if not self._tracking and not output.accepted:
                return ArmMode.IDLE if not self._ever_commanded else ArmMode.HOLDING
            self.backend.command(output.target, output.gripper)
            self._tracking = True
            self._ever_commanded = True
            return ArmMode.MOVING
        if self._tracking:
            self.backend.hold()
            self._tracking = False
            events.append(
                "e-stop: holding" if output.decision is Decision.ESTOP else "command timeout: holding"
            )
        if output.decision is Decision.ESTOP:
            return ArmMode.ESTOP
        return ArmMode.HOLDING if self._ever_commanded else ArmMode.IDLE

    def _on_fault(self, fault: ArmFault, now: float, events: list[str]) -> ArmMode:
        self._error = str(fault)
        self._tracking = False
        if fault.connection_lost:
            self.counters["connection_losses"] += 1
            events.append(f"connection lost: {fault}")
            self.backend.close()
            self._connected = False
            self._next_connect = now + self._reconnect_interval
            return ArmMode.DISCONNECTED
        self.counters["robot_errors"] += 1
        events.append(f"robot error: {fault}")
        if not self._recover_errors:
            return ArmMode.ERROR
        try:
            self.backend.recover()
            state = self.backend.read_state()
        except ArmFault as again:
            events.append(f"recovery failed: {again}")
            if again.connection_lost:
                return self._on_fault(again, now, events)
            return ArmMode.ERROR
        if state.error:
            events.append(f"recovery failed: {state.error}")
            return ArmMode.ERROR
        self.counters["recoveries"] += 1
        self._restart_from(state)
        self._state = state
        self._error = ""
        events.append("recovered")
        return ArmMode.HOLDING

    def _report(self, mode: ArmMode, events: list[str]) -> TickReport:
        self._mode = mode
        return TickReport(
            mode=mode,
            state=self._state,
            target=self.safety.target,
            gripper_target=self.safety.gripper_target,
            error=self._error,
            events=events,
        )

    def close(self) -> None:
        self.backend.close()
        self._connected = False
