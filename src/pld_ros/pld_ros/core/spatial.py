"""Poses and rotations in the conventions of ROS (REP-103): metres, radians, quaternions x, y, z, w.

Small and numpy-only, so the safety layer and the drivers share one definition of what a pose
delta means: translation in the base frame, rotation as an axis-angle vector applied in the base
frame about the end-effector position (``R_new = exp(rotvec) @ R_old``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def _unit(q: FloatArray) -> FloatArray:
    norm = float(np.linalg.norm(q))
    if not np.isfinite(norm) or norm < 1e-12:
        raise ValueError(f"not a rotation quaternion: {q.tolist()}")
    q = q / norm
    # One representative per rotation (w >= 0) keeps comparisons and interpolation simple.
    return q if q[3] >= 0.0 else -q


def quat_multiply(a: FloatArray, b: FloatArray) -> FloatArray:
    """Hamilton product a * b of x, y, z, w quaternions (apply b first, then a)."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def quat_from_rotvec(rotvec: FloatArray) -> FloatArray:
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return np.array([0.0, 0.0, 0.0, 1.0])
    axis = rotvec / angle
    return np.array([*(axis * np.sin(angle / 2.0)), np.cos(angle / 2.0)])


def rotvec_from_quat(q: FloatArray) -> FloatArray:
    q = _unit(q)
    sin_half = float(np.linalg.norm(q[:3]))
    if sin_half < 1e-12:
        return np.zeros(3)
    angle = 2.0 * np.arctan2(sin_half, q[3])
    result: FloatArray = q[:3] / sin_half * angle
    return result


def quat_to_matrix(q: FloatArray) -> FloatArray:
    x, y, z, w = _unit(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def quat_from_matrix(m: FloatArray) -> FloatArray:
    # Shepperd's method: pick the largest diagonal term for numerical stability.
    trace = float(np.trace(m))
    if trace > 0.0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    return _unit(np.array(q))


def rotation_angle_between(a: FloatArray, b: FloatArray) -> float:
    """Smallest angle (rad) rotating a onto b."""
    dot = abs(float(np.dot(_unit(a), _unit(b))))
    return 2.0 * float(np.arccos(min(1.0, dot)))


@dataclass(frozen=True)
class Pose:
    """A pose in some frame: position (m) and orientation quaternion (x, y, z, w)."""

    position: FloatArray
    orientation: FloatArray

    @staticmethod
    def of(
        position: tuple[float, float, float] | FloatArray, orientation: tuple[float, ...] | FloatArray
    ) -> Pose:
        return Pose(
            np.asarray(position, dtype=np.float64).copy(), _unit(np.asarray(orientation, dtype=np.float64))
        )

    def moved(self, translation: FloatArray, rotvec: FloatArray) -> Pose:
        """This pose after a delta: translation in the base frame, rotation about the position."""
        return Pose(
            self.position + translation,
            _unit(quat_multiply(quat_from_rotvec(rotvec), self.orientation)),
        )

    def delta_to(self, other: Pose) -> tuple[FloatArray, FloatArray]:
        """The (translation, rotvec) delta that :meth:`moved` needs to turn this pose into ``other``."""
        conj = self.orientation * np.array([-1.0, -1.0, -1.0, 1.0])
        return other.position - self.position, rotvec_from_quat(quat_multiply(other.orientation, conj))

    def matrix(self) -> FloatArray:
        """4x4 homogeneous transform."""
        m = np.eye(4)
        m[:3, :3] = quat_to_matrix(self.orientation)
        m[:3, 3] = self.position
        return m

    @staticmethod
    def from_matrix(m: FloatArray) -> Pose:
        return Pose(np.asarray(m[:3, 3], dtype=np.float64).copy(), quat_from_matrix(np.asarray(m[:3, :3])))
