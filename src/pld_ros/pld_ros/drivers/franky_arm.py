"""Franka FR3 / Panda through franky (libfranka), for the real robot and franky-sim alike.

Every tick retargets one asynchronous absolute ``CartesianMotion``: franky replans from the
current motion state, so the arm follows a moving target smoothly. Relative asynchronous motions
are not used because they drift (each is relative to a pose sampled at a slightly different
time); the safety filter integrates the deltas instead.

The Franka Hand is slow and executes one command at a time, so it is driven as a binary gripper
with hysteresis: a closure above 0.6 grasps (with force, accepting any object width), below 0.4
opens to ``max_gripper_width * (1 - closure)``; in between nothing changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import franky
import numpy as np

from pld_ros.core.spatial import Pose
from pld_ros.drivers.arm import ArmFault, ArmState
from pld_ros.profile import FrankyArm

_log = logging.getLogger(__name__)

# libfranka's errors derive from franky.Exception (which shadows the builtin name there); franky's
# own gripper and motion errors derive from the builtin Exception, and its motion planner (Ruckig)
# reports failures such as "Motion planner failed with error code -111" as plain RuntimeErrors.
_ERRORS = (franky.Exception, franky.GripperException, franky.InvalidMotionTypeException, RuntimeError)
MOVE_TIMEOUT = 20.0
"""Seconds a joint motion (a reset to the home joints) may take."""
_CLOSE_ABOVE = 0.6
_OPEN_BELOW = 0.4
_OPEN_ENOUGH = 0.1
"""Measured closure below which an idle hand counts as open."""
_STILL_OPEN = 0.02
"""Measured closure below which an idle hand that was told to close has not closed at all."""


def hand_request(closure: float, closed: bool | None, measured: float, busy: bool) -> bool | None:
    """Whether to send the hand a close (True) or open (False) command now, or nothing (None).

    ``closure``: the commanded closure; ``closed``: what the hand was last told; ``measured``:
    its measured closure; ``busy``: a command is still running. A change is sent at once. An idle
    hand that is not where it was told is told again: a hand command can fail (franky-sim refuses
    them while the arm recovers from an error), and the hand would otherwise stay closed for good.
    """
    close = True if closure > _CLOSE_ABOVE else False if closure < _OPEN_BELOW else closed
    if close is None:
        return None
    if close != closed:
        return close
    if busy:
        return None
    # A closed hand may hold an object at any width, so only "has not closed at all" is a miss.
    missed = measured < _STILL_OPEN if close else measured > _OPEN_ENOUGH
    return close if missed else None


_REALTIME = {
    "enforce": franky.RealtimeConfig.Enforce,
    "ignore": franky.RealtimeConfig.Ignore,
}


class _Hand:
    """Drives the Franka Hand from a thread of its own; the newest request wins.

    A hand command blocks until the fingers stop, and when the robot vanishes mid-command
    libfranka gives up only after about 60 s. With franky's asynchronous hand commands, whoever
    then destroys the Gripper waits for that, holding the GIL: the whole process froze for 61 s
    (measured against a killed franky-sim). Here the worker thread owns the Gripper and lets it go
    only once its last command has returned, so nobody else ever waits on it.

    A command can also never be answered: franky-sim answers only once the fingers have been still
    for 100 simulation steps, and never answers a command that a later one replaced. In a soak the
    hand then stayed closed for good, the open request queued behind the hung grasp. So a command
    that goes unanswered for ``gripper_timeout`` is left to its thread while the next request
    runs. It is not stopped: in franky-sim a Stop answers only itself (the hung command stays
    unanswered) and holds the fingers where they are with 70 N.
    """

    def __init__(self, gripper: Any, config: FrankyArm) -> None:
        self._gripper: Any = gripper
        self._config = config
        self._wakeup = threading.Condition()
        self._request: tuple[bool, float] | None = None
        self._running = False
        self._stopped = False
        self.abandoned = 0
        """Commands given up unanswered."""
        threading.Thread(target=self._work, args=(gripper,), name="franka-hand", daemon=True).start()

    def state(self) -> tuple[float, bool]:
        """Finger width (m) and whether they hold an object: one round trip to the hand."""
        hand = self._gripper.state
        return float(hand.width), bool(hand.is_grasped)

    @property
    def busy(self) -> bool:
        """A command is waiting or running."""
        with self._wakeup:
            return self._running or self._request is not None

    def request(self, close: bool, width: float) -> None:
        with self._wakeup:
            self._request = (close, width)
            self._wakeup.notify()

    def release(self) -> None:
        """Forget the hand; a command in flight finishes (or fails) in the worker, not here."""
        with self._wakeup:
            self._stopped = True
            self._wakeup.notify()
        self._gripper = None

    def _work(self, gripper: Any) -> None:
        # libfranka busy-waits for a hand command's reply (up to ~60 s when the robot vanished:
        # 90 % of a core, measured), and this thread inherits the control thread's SCHED_FIFO 99.
        # The hand has no deadline, so it runs at normal priority and cannot starve anything
        # (the command threads it starts inherit that).
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        while True:
            with self._wakeup:
                self._wakeup.wait_for(lambda: self._stopped or self._request is not None)
                if self._stopped:
                    return
                assert self._request is not None
                (close, width), self._request = self._request, None
                self._running = True
            try:
                if not self._execute(gripper, close, width):
                    self.abandoned += 1
                    _log.warning(
                        "Franka hand: %s command unanswered after %.1f s, given up",
                        "grasp" if close else "open",
                        self._config.gripper_timeout,
                    )
            finally:
                with self._wakeup:
                    self._running = False

    def _execute(self, gripper: Any, close: bool, width: float) -> bool:
        """Run one hand command on a thread of its own; False when it was given up unanswered."""
        cfg = self._config
        answered = threading.Event()

        def command() -> None:
            # Failures are not reported from here: a hand that lost its connection shows up in
            # the next state read, a grasp that closes on nothing is not a fault, and a command
            # that failed is sent again (hand_request).
            try:
                with contextlib.suppress(*_ERRORS):
                    if close:
                        gripper.grasp(
                            0.0,
                            cfg.gripper_speed,
                            cfg.gripper_force,
                            epsilon_inner=0.005,
                            epsilon_outer=cfg.max_gripper_width,
                        )
                    else:
                        gripper.move(width, cfg.gripper_speed)
            finally:
                answered.set()

        threading.Thread(target=command, name="franka-hand-command", daemon=True).start()
        return answered.wait(cfg.gripper_timeout)


class FrankyBackend:
    """:class:`~pld_ros.drivers.arm.ArmBackend` for a Franka arm with its hand."""

    def __init__(
        self, config: FrankyArm, *, move_timeout: float = MOVE_TIMEOUT, close_timeout: float = 1.0
    ) -> None:
        """``move_timeout``: s a joint motion may take. ``close_timeout``: s close() waits for a
        running motion to end. A Robot dropped mid-motion waits in its destructor for the motion,
        holding the GIL: against a franky-sim in the same process, whose answers need the GIL, that
        never ends, so such a process gives close() as long as a motion can take."""
        self._config = config
        self._move_timeout = move_timeout
        self._close_timeout = close_timeout
        self._robot: Any = None
        self._hand: _Hand | None = None
        self._abandoned_before = 0  # hand commands given up on earlier connections
        self._gripper_closed: bool | None = None
        self._measured_closure = 0.0
        prefix = config.model
        self._joint_names = tuple(f"{prefix}_joint{i}" for i in range(1, 8))

    @property
    def base_frame(self) -> str:
        return f"{self._config.model}_link0"

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self._joint_names

    @property
    def counters(self) -> Mapping[str, int]:
        hand = self._hand
        return {"hand_commands_abandoned": self._abandoned_before + (hand.abandoned if hand else 0)}

    def _faulted(self, exc: BaseException) -> ArmFault:
        # NetworkException: the link is gone (cable, robot power, simulator killed): reconnect.
        # Control / Command / Reflex exceptions: the robot is there but refused: recover.
        lost = isinstance(exc, franky.NetworkException | franky.IncompatibleVersionException)
        return ArmFault(f"{type(exc).__name__}: {exc}", connection_lost=lost)

    def connect(self) -> None:
        self.close()
        try:
            robot = franky.Robot(self._config.host, realtime_config=_REALTIME[self._config.realtime])
            robot.relative_dynamics_factor = self._config.relative_dynamics_factor
            self._hand = _Hand(franky.Gripper(self._config.host), self._config)
        except _ERRORS as exc:
            raise ArmFault(f"cannot connect to {self._config.host}: {exc}", connection_lost=True) from exc
        self._robot = robot
        self._gripper_closed = None

    def _require(self) -> Any:
        if self._robot is None:
            raise ArmFault("not connected", connection_lost=True)
        return self._robot

    def read_state(self) -> ArmState:
        robot = self._require()
        try:
            state = robot.state
            assert self._hand is not None
            width, grasped = self._hand.state()
        except _ERRORS as exc:
            raise self._faulted(exc) from exc
        ee = state.O_T_EE
        # current_errors is an object that is truthy even when empty; has_errors is the flag.
        error = f"{state.robot_mode}: {state.current_errors}" if robot.has_errors else ""
        max_width = self._config.max_gripper_width
        self._measured_closure = float(np.clip(1.0 - width / max_width, 0.0, 1.0))
        return ArmState(
            joint_names=self._joint_names,
            joint_positions=np.asarray(state.q, dtype=np.float64),
            joint_velocities=np.asarray(state.dq, dtype=np.float64),
            joint_efforts=np.asarray(state.tau_J, dtype=np.float64),
            ee_pose=Pose.of(np.asarray(ee.translation), np.asarray(ee.quaternion)),
            gripper_width=width,
            gripper_closure=self._measured_closure,
            gripper_grasped=grasped,
            error=error,
        )

    def robot_time(self) -> float | None:
        # libfranka's time: the robot's 1 kHz cycle counter, franky-sim's simulated clock.
        robot = self._robot
        if robot is None:
            return None
        try:
            return float(robot.state.time.to_sec())
        except _ERRORS:
            return None

    def command(self, target: Pose, gripper_closure: float) -> None:
        robot = self._require()
        if not (np.all(np.isfinite(target.position)) and np.isfinite(gripper_closure)):
            raise ValueError("non-finite target reached the Franka backend")
        affine = franky.Affine(target.position, target.orientation)
        try:
            robot.move(franky.CartesianMotion(affine, franky.ReferenceType.Absolute), asynchronous=True)
            self._command_gripper(gripper_closure)
        except _ERRORS as exc:
            raise self._faulted(exc) from exc

    def _command_gripper(self, closure: float) -> None:
        if self._hand is None:
            return
        close = hand_request(closure, self._gripper_closed, self._measured_closure, self._hand.busy)
        if close is None:
            return
        self._hand.request(close, self._config.max_gripper_width * (1.0 - closure))
        self._gripper_closed = close

    def hold(self) -> None:
        robot = self._require()
        # Retarget to where the arm is instead of robot.stop(): stop() ends the running motion
        # with a "Move command preempted" ControlException, which would read as a robot error.
        try:
            here = robot.current_cartesian_state.pose.end_effector_pose
            robot.move(franky.CartesianMotion(here, franky.ReferenceType.Absolute), asynchronous=True)
        except _ERRORS as exc:
            raise self._faulted(exc) from exc

    def move_joints(self, joints: tuple[float, ...]) -> None:
        robot = self._require()
        try:
            # franky refuses to start a joint motion while an asynchronous Cartesian one runs.
            self.hold()
            robot.join_motion(timeout=self._move_timeout)
            robot.move(franky.JointMotion(list(joints)), asynchronous=True)
            finished = robot.join_motion(timeout=self._move_timeout)
        except _ERRORS as exc:
            raise self._faulted(exc) from exc
        if not finished:
            self.hold()
            raise ArmFault(f"joint motion did not finish in {self._move_timeout} s", connection_lost=False)

    def recover(self) -> None:
        robot = self._require()
        try:
            if not robot.recover_from_errors():
                raise ArmFault("automatic error recovery failed", connection_lost=False)
        except _ERRORS as exc:
            raise self._faulted(exc) from exc

    def close(self) -> None:
        # Bring a live arm to rest before letting go; on a dead link these calls fail fast and
        # are irrelevant. robot.stop() is avoided: racing a dying connection it can crash libfranka.
        robot = self._robot
        if robot is not None:
            with contextlib.suppress(*_ERRORS, ArmFault):
                if robot.is_in_control:
                    # A joint motion (a reset) refuses a Cartesian target and runs to its end.
                    with contextlib.suppress(*_ERRORS, ArmFault):
                        self.hold()
                    robot.join_motion(timeout=self._close_timeout)
        if self._hand is not None:
            self._hand.release()
            self._abandoned_before += self._hand.abandoned
        self._hand = None
        self._robot = None
