"""The interface every arm backend implements (franky for Franka, i2rt for YAM).

A backend only moves the arm where it is told: absolute end-effector targets in the base frame.
Integrating deltas, limits, timeouts and the e-stop live above it in
:mod:`pld_ros.core.safety`, so every backend gets the same guard.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from pld_ros.core.spatial import FloatArray, Pose


class ArmFault(RuntimeError):
    """The arm cannot be commanded right now.

    ``connection_lost`` distinguishes a dead link (reconnect) from a robot error such as a reflex
    (call :meth:`ArmBackend.recover`).
    """

    def __init__(self, message: str, *, connection_lost: bool) -> None:
        super().__init__(message)
        self.connection_lost = connection_lost


@dataclass(frozen=True)
class ArmState:
    joint_names: tuple[str, ...]
    joint_positions: FloatArray
    """rad"""
    joint_velocities: FloatArray
    """rad/s"""
    joint_efforts: FloatArray
    """Nm"""
    ee_pose: Pose
    """Measured end-effector (TCP) pose in the base frame."""
    gripper_width: float
    """m between the fingers"""
    gripper_closure: float
    """[0, 1]: 0 fully open, 1 fully closed."""
    gripper_grasped: bool
    error: str = ""
    """The robot's own error text; empty when none."""


class ArmBackend(Protocol):
    """Blocking calls are marked; everything else returns within a control tick."""

    @property
    def base_frame(self) -> str:
        """Name of the frame targets and poses are expressed in (matches the URDF)."""
        ...

    @property
    def counters(self) -> Mapping[str, int]:
        """The backend's own event counts for diagnostics (e.g. hand commands given up)."""
        ...

    def connect(self) -> None:
        """(blocking) Open the connection; raise :class:`ArmFault` if the arm cannot be reached."""
        ...

    def read_state(self) -> ArmState:
        """The latest state; raise :class:`ArmFault` when the connection is gone."""
        ...

    def robot_time(self) -> float | None:
        """Seconds on the arm's own clock (simulated time in a simulator), None without one or
        while disconnected; only differences between two readings mean anything."""
        ...

    def command(self, target: Pose, gripper_closure: float) -> None:
        """Retarget the arm to an absolute pose and the gripper to a closure, without waiting."""
        ...

    def hold(self) -> None:
        """Stop where the arm is now (used on timeouts and e-stop)."""
        ...

    def move_joints(self, joints: tuple[float, ...]) -> None:
        """(blocking) Go to a joint configuration, e.g. the reset pose."""
        ...

    def recover(self) -> None:
        """(blocking) Clear a robot error so commanding can resume."""
        ...

    def close(self) -> None:
        """Release the connection; safe to call twice and after a fault."""
        ...
