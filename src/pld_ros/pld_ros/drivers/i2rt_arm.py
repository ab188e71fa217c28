"""The I2RT YAM arm behind :class:`~pld_ros.drivers.arm.ArmBackend`, through the i2rt driver.

The driver only takes joint positions, so absolute end-effector targets become joint targets by
differential inverse kinematics (mink) on the driver's own MuJoCo model of arm and gripper,
seeded with the previous solution: the safety layer above keeps consecutive targets a few
millimetres apart, so a handful of Gauss-Newton steps converge. A target out of reach is not an
error here: the solver stops at the nearest configuration within the joint limits, that is
commanded, and :attr:`I2rtArmBackend.last_ik` says how far from the target it is.

``sim=True`` swaps the CAN robot for the driver's kinematic ``SimRobot`` (same interface, joints
teleport to their commands); nothing else differs between the two paths.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mink
import mujoco
import numpy as np
from i2rt.robots.get_robot import get_yam_robot
from i2rt.robots.utils import GripperType
from numpy.typing import NDArray

from pld_ros.core.spatial import FloatArray, Pose, rotation_angle_between
from pld_ros.drivers.arm import ArmFault, ArmState
from pld_ros.profile import I2rtArm

_log = logging.getLogger(__name__)

ARM_JOINTS = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")
TCP_SITE = "grasp_site"
"""The TCP: the site of the driver's model between the fingertips, z pointing out of the hand."""

_IK_SOLVER = "daqp"
# A millimetre-scale step converges in 1-3 iterations; the cap bounds the cost of a target out of
# reach, where the solver creeps along a joint limit (each iteration ~0.2 ms).
_IK_MAX_ITERATIONS = 20
_IK_POSITION_TOLERANCE = 1e-4
_IK_ROTATION_TOLERANCE = 1e-3
# The real gripper's command is normalised: 0 closed, 1 open.
_GRIPPER_OPEN = 1.0
# Commanded closure ahead of the measured one by this much means the fingers are blocked.
_GRASP_LAG = 0.1
_MOVE_RATE = 50.0
"""Hz of the interpolated joint targets sent by move_joints (the driver's own rate)."""


@dataclass(frozen=True)
class IkResult:
    """How well one commanded target could be reached."""

    converged: bool
    """The solution is within 0.1 mm and 1 mrad of the target."""
    position_error: float
    """m between the target and the commanded joints' TCP."""
    rotation_error: float
    """rad between the target and the commanded joints' TCP."""
    iterations: int
    seconds: float


def _gripper_type(name: str) -> GripperType:
    return GripperType.NO_GRIPPER if name == "none" else GripperType(name)


class I2rtArmBackend:
    """One YAM arm; implements :class:`~pld_ros.drivers.arm.ArmBackend`.

    Thread-safe: the node may read state, command and hold from different callbacks.
    """

    def __init__(self, config: I2rtArm, *, sim: bool = False, joint_speed: float = 1.0) -> None:
        """``joint_speed``: rad/s of the fastest joint during :meth:`move_joints`."""
        if joint_speed <= 0.0:
            raise ValueError(f"joint_speed must be positive, got {joint_speed}")
        self._config = config
        self._sim = sim
        self._joint_speed = joint_speed
        self._gripper = _gripper_type(config.gripper)
        self._lock = threading.RLock()
        self._moving = threading.Event()
        self._interrupt = threading.Event()
        self._robot: Any = None
        self._ik: mink.Configuration | None = None
        self._fk: mink.Configuration | None = None
        self._task: mink.FrameTask | None = None
        self._limits: list[mink.Limit] = []
        self._arm_qpos: NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self._lower: FloatArray = np.zeros(len(ARM_JOINTS))
        self._upper: FloatArray = np.zeros(len(ARM_JOINTS))
        self._max_width = 0.0
        self._gripper_command = _GRIPPER_OPEN
        self._last_ik: IkResult | None = None

    # ---- ArmBackend --------------------------------------------------------------------------

    @property
    def base_frame(self) -> str:
        return "base_link"

    @property
    def counters(self) -> Mapping[str, int]:
        return {}

    @property
    def driver(self) -> Any:
        """The i2rt ``Robot`` in use (``SimRobot`` in simulation); None when not connected."""
        return self._robot

    @property
    def model_path(self) -> str:
        """The driver's MJCF of arm and gripper (what the IK and a simulated world use)."""
        return str(self._connected_robot().xml_path)

    @property
    def last_ik(self) -> IkResult | None:
        """The IK outcome of the last :meth:`command`; none before the first one."""
        return self._last_ik

    @property
    def joint_limits(self) -> tuple[FloatArray, FloatArray]:
        """Lower and upper limits of the arm joints (rad) that every command stays within."""
        return self._lower.copy(), self._upper.copy()

    def connect(self) -> None:
        with self._lock:
            if self._robot is not None:
                return
            try:
                robot = self._make_robot()
            except Exception as exc:
                raise ArmFault(
                    f"cannot reach the YAM on {self._config.can_channel}: {exc}", connection_lost=True
                ) from exc
            self._robot = robot
            self._load_model(robot)
            observed = robot.get_observations()
            if self._has_gripper:
                self._gripper_command = float(observed["gripper_pos"][0])
            self._seed(np.asarray(observed["joint_pos"], dtype=np.float64))

    def robot_time(self) -> float | None:
        # The i2rt driver keeps no clock of its own (its sim mode steps in wall time).
        return None

    def read_state(self) -> ArmState:
        with self._lock:
            observed = self._observe()
            joints = np.asarray(observed["joint_pos"], dtype=np.float64)
            opening = float(observed["gripper_pos"][0]) if self._has_gripper else _GRIPPER_OPEN
            closure = float(np.clip(1.0 - opening, 0.0, 1.0))
            commanded = 1.0 - self._gripper_command
            return ArmState(
                joint_names=ARM_JOINTS,
                joint_positions=joints,
                joint_velocities=np.asarray(observed["joint_vel"], dtype=np.float64),
                joint_efforts=np.asarray(observed["joint_eff"], dtype=np.float64),
                ee_pose=self.forward_kinematics(joints),
                gripper_width=(1.0 - closure) * self._max_width,
                gripper_closure=closure,
                gripper_grasped=self._has_gripper and commanded > 0.5 and commanded - closure > _GRASP_LAG,
            )

    def command(self, target: Pose, gripper_closure: float) -> None:
        """Retarget the TCP (base frame) and the gripper; interrupts a :meth:`move_joints`.

        Raises ValueError for a non-finite target or closure. A target out of reach is clipped to
        the nearest reachable configuration within the joint limits (see :attr:`last_ik`).
        """
        if not (
            np.all(np.isfinite(target.position))
            and np.all(np.isfinite(target.orientation))
            and np.isfinite(gripper_closure)
        ):
            raise ValueError(f"non-finite target {target} / gripper closure {gripper_closure}")
        with self._lock:
            robot = self._connected_robot()
            if self._moving.is_set():
                self._interrupt.set()
                self._seed(np.asarray(self._observe()["joint_pos"], dtype=np.float64))
            joints = self._solve(target)
            self._gripper_command = 1.0 - float(np.clip(gripper_closure, 0.0, 1.0))
            self._send(robot, joints)

    def hold(self) -> None:
        """Stop where the arm is, interrupting a :meth:`move_joints`."""
        self._interrupt.set()
        with self._lock:
            robot = self._connected_robot()
            joints = np.asarray(self._observe()["joint_pos"], dtype=np.float64)
            self._send(robot, joints)
            self._seed(joints)

    def move_joints(self, joints: tuple[float, ...]) -> None:
        """(blocking) Interpolate to a joint configuration at ``joint_speed``.

        :meth:`hold`, :meth:`command`, :meth:`recover` or :meth:`close` from another thread stop it
        where it is; it then raises :class:`ArmFault`. Joints outside the limits: ValueError.
        """
        goal = np.asarray(joints, dtype=np.float64)
        if goal.shape != (len(ARM_JOINTS),) or not np.all(np.isfinite(goal)):
            raise ValueError(f"expected {len(ARM_JOINTS)} finite joint positions, got {joints}")
        with self._lock:
            self._connected_robot()
            if np.any(goal < self._lower) or np.any(goal > self._upper):
                raise ValueError(
                    f"joints {goal.tolist()} outside [{self._lower.tolist()}, {self._upper.tolist()}]"
                )
            if self._moving.is_set():
                raise ArmFault("move_joints already in progress", connection_lost=False)
            self._moving.set()
            self._interrupt.clear()
            start = np.asarray(self._observe()["joint_pos"], dtype=np.float64)
        try:
            duration = max(float(np.max(np.abs(goal - start))) / self._joint_speed, 0.2)
            steps = int(np.ceil(duration * _MOVE_RATE))
            for step in range(1, steps + 1):
                self._interrupt.wait(1.0 / _MOVE_RATE)
                # Cosine profile: zero velocity at both ends, so the real arm does not jerk.
                alpha = 0.5 - 0.5 * np.cos(np.pi * step / steps)
                with self._lock:
                    # Checked under the lock: nothing is sent after an interrupting call has run.
                    if self._interrupt.is_set():
                        raise ArmFault("move_joints interrupted", connection_lost=False)
                    self._send(self._connected_robot(), start + alpha * (goal - start))
            with self._lock:
                self._seed(goal)
        finally:
            self._moving.clear()

    def recover(self) -> None:
        """(blocking) Hold where the arm is; after a motor error first re-create the driver, which
        re-enables the motors (the i2rt driver has no other way to clear one)."""
        self._interrupt.set()
        with self._lock:
            if self._robot is None or self._stopped(self._robot):
                self._release()
                self.connect()
        self.hold()

    def close(self) -> None:
        self._interrupt.set()
        with self._lock:
            self._release()

    # ---- kinematics --------------------------------------------------------------------------

    def forward_kinematics(self, joints: FloatArray) -> Pose:
        """TCP pose in the base frame for arm joint positions."""
        with self._lock:
            fk = self._configured(self._fk)
            q = fk.q.copy()
            q[self._arm_qpos] = joints
            fk.update(q)
            return Pose.from_matrix(fk.get_transform_frame_to_world(TCP_SITE, "site").as_matrix())

    def _solve(self, target: Pose) -> FloatArray:
        ik = self._configured(self._ik)
        task = self._task
        assert task is not None
        start = time.perf_counter()
        task.set_target(mink.SE3.from_matrix(target.matrix()))
        iterations = 0
        position_error, rotation_error = self._error(ik, target)
        while iterations < _IK_MAX_ITERATIONS and not (
            position_error <= _IK_POSITION_TOLERANCE and rotation_error <= _IK_ROTATION_TOLERANCE
        ):
            velocity = mink.solve_ik(
                ik, [task], 1.0, _IK_SOLVER, damping=self._config.ik_damping, limits=self._limits
            )
            ik.integrate_inplace(velocity, 1.0)
            iterations += 1
            position_error, rotation_error = self._error(ik, target)
        converged = position_error <= _IK_POSITION_TOLERANCE and rotation_error <= _IK_ROTATION_TOLERANCE
        self._last_ik = IkResult(
            converged, position_error, rotation_error, iterations, time.perf_counter() - start
        )
        if not converged:
            _log.debug("target out of reach: %.1f mm, %.3f rad off", position_error * 1e3, rotation_error)
        # The limit constraint keeps the solution inside; the clip only removes rounding.
        joints: FloatArray = np.clip(ik.q[self._arm_qpos], self._lower, self._upper)
        return joints

    @staticmethod
    def _error(ik: mink.Configuration, target: Pose) -> tuple[float, float]:
        reached = Pose.from_matrix(ik.get_transform_frame_to_world(TCP_SITE, "site").as_matrix())
        return (
            float(np.linalg.norm(reached.position - target.position)),
            rotation_angle_between(reached.orientation, target.orientation),
        )

    def _load_model(self, robot: Any) -> None:
        model = mujoco.MjModel.from_xml_path(str(robot.xml_path))
        ids = [model.joint(name).id for name in ARM_JOINTS]
        self._arm_qpos = np.array([model.jnt_qposadr[i] for i in ids], dtype=np.intp)
        ranges = np.array([model.jnt_range[i] for i in ids], dtype=np.float64)
        driver_limits = robot.get_robot_info().get("joint_limits")
        # The model's ranges are the tighter ones (the driver adds a margin); honour both anyway.
        if driver_limits is not None:
            ranges[:, 0] = np.maximum(ranges[:, 0], np.asarray(driver_limits)[:, 0])
            ranges[:, 1] = np.minimum(ranges[:, 1], np.asarray(driver_limits)[:, 1])
        self._lower, self._upper = ranges[:, 0].copy(), ranges[:, 1].copy()
        fingers = [j for j in range(model.njnt) if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_SLIDE]
        # Two fingers each slide over their joint range: the opening is twice it.
        self._max_width = 2.0 * float(model.jnt_range[fingers[0]][1]) if fingers else 0.0
        self._ik = mink.Configuration(model)
        self._fk = mink.Configuration(model)
        self._task = mink.FrameTask(
            TCP_SITE, "site", position_cost=1.0, orientation_cost=0.5, lm_damping=1e-3
        )
        self._limits = [mink.ConfigurationLimit(model)]

    # ---- driver ------------------------------------------------------------------------------

    @property
    def _has_gripper(self) -> bool:
        return self._gripper is not GripperType.NO_GRIPPER

    def _make_robot(self) -> Any:
        if self._sim:
            return get_yam_robot(gripper_type=self._gripper, sim=True)
        # Hold position from the start instead of floating in gravity-compensation mode.
        return get_yam_robot(
            channel=self._config.can_channel, gripper_type=self._gripper, zero_gravity_mode=False
        )

    def _connected_robot(self) -> Any:
        if self._robot is None:
            raise ArmFault("the YAM is not connected", connection_lost=True)
        return self._robot

    @staticmethod
    def _stopped(robot: Any) -> bool:
        # The CAN control thread stops itself on motor errors and bus failures (the kinematic
        # SimRobot has no motor chain and never stops).
        chain = getattr(robot, "motor_chain", None)
        return chain is not None and not getattr(chain, "running", True)

    def _observe(self) -> dict[str, Any]:
        robot = self._connected_robot()
        if self._stopped(robot):
            raise ArmFault("the YAM motor chain stopped (motor error or CAN failure)", connection_lost=False)
        try:
            observed: dict[str, Any] = robot.get_observations()
        except Exception as exc:
            raise ArmFault(f"cannot read the YAM: {exc}", connection_lost=True) from exc
        return observed

    def _send(self, robot: Any, joints: FloatArray) -> None:
        command = np.append(joints, self._gripper_command) if self._has_gripper else joints.copy()
        try:
            robot.command_joint_pos(command)
        except Exception as exc:
            raise ArmFault(f"cannot command the YAM: {exc}", connection_lost=True) from exc

    def _seed(self, joints: FloatArray) -> None:
        ik = self._configured(self._ik)
        q = ik.q.copy()
        q[self._arm_qpos] = joints
        ik.update(q)

    @staticmethod
    def _configured(configuration: mink.Configuration | None) -> mink.Configuration:
        if configuration is None:
            raise ArmFault("the YAM is not connected", connection_lost=True)
        return configuration

    def _release(self) -> None:
        robot, self._robot = self._robot, None
        if robot is None:
            return
        try:
            robot.close()
        except Exception:
            _log.exception("closing the YAM driver failed")
