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
from typing import Any

import franky
import numpy as np

from pld_ros.core.spatial import Pose
from pld_ros.drivers.arm import ArmFault, ArmState
from pld_ros.profile import FrankyArm

# libfranka's errors derive from franky.Exception (which shadows the builtin name there); franky's
# own gripper and motion errors derive from the builtin Exception, and its motion planner (Ruckig)
# reports failures such as "Motion planner failed with error code -111" as plain RuntimeErrors.
_ERRORS = (franky.Exception, franky.GripperException, franky.InvalidMotionTypeException, RuntimeError)
_CLOSE_ABOVE = 0.6
_OPEN_BELOW = 0.4
_REALTIME = {
    "enforce": franky.RealtimeConfig.Enforce,
    "ignore": franky.RealtimeConfig.Ignore,
}


class FrankyBackend:
    """:class:`~pld_ros.drivers.arm.ArmBackend` for a Franka arm with its hand."""

    def __init__(self, config: FrankyArm, *, move_timeout: float = 20.0) -> None:
        self._config = config
        self._move_timeout = move_timeout
        self._robot: Any = None
        self._gripper: Any = None
        self._gripper_closed: bool | None = None
        self._gripper_future: Any = None
        prefix = config.model
        self._joint_names = tuple(f"{prefix}_joint{i}" for i in range(1, 8))

    @property
    def base_frame(self) -> str:
        return f"{self._config.model}_link0"

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self._joint_names

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
            self._gripper = franky.Gripper(self._config.host)
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
            # One round trip to the hand's server per tick, not one per field.
            hand = self._gripper.state
            width = float(hand.width)
            grasped = bool(hand.is_grasped)
        except _ERRORS as exc:
            raise self._faulted(exc) from exc
        ee = state.O_T_EE
        # current_errors is an object that is truthy even when empty; has_errors is the flag.
        error = f"{state.robot_mode}: {state.current_errors}" if robot.has_errors else ""
        max_width = self._config.max_gripper_width
        return ArmState(
            joint_names=self._joint_names,
            joint_positions=np.asarray(state.q, dtype=np.float64),
            joint_velocities=np.asarray(state.dq, dtype=np.float64),
            joint_efforts=np.asarray(state.tau_J, dtype=np.float64),
            ee_pose=Pose.of(np.asarray(ee.translation), np.asarray(ee.quaternion)),
            gripper_width=width,
            gripper_closure=float(np.clip(1.0 - width / max_width, 0.0, 1.0)),
            gripper_grasped=grasped,
            error=error,
        )

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
        close = True if closure > _CLOSE_ABOVE else False if closure < _OPEN_BELOW else self._gripper_closed
        if close is None or close == self._gripper_closed:
            return
        if self._gripper_future is not None and not self._gripper_future.wait(0):
            # The hand is busy; the next tick asks again (the state has not been updated yet).
            return
        cfg = self._config
        if close:
            self._gripper_future = self._gripper.grasp_async(
                0.0,
                cfg.gripper_speed,
                cfg.gripper_force,
                epsilon_inner=0.005,
                epsilon_outer=cfg.max_gripper_width,
            )
        else:
            self._gripper_future = self._gripper.move_async(
                cfg.max_gripper_width * (1.0 - closure), cfg.gripper_speed
            )
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
        if self._robot is not None:
            with contextlib.suppress(*_ERRORS, ArmFault):
                if self._robot.is_in_control:
                    self.hold()
                    self._robot.join_motion(timeout=1.0)
        # Release in dependency order: a pending gripper future outliving its Gripper segfaults
        # inside franky when it is finally destroyed.
        self._gripper_future = None
        self._gripper = None
        self._robot = None
