"""What every policy sees and answers: the observation and action conventions of the project.

Base policy, residual actor and success classifier share them, so a model trained on one part of
the stack (a demonstration, a bag, a rollout) can be used by any other.

- Action (7): ``tx ty tz rx ry rz gripper``. A translation delta (m) and an axis-angle rotation
  delta (rad) in the arm's base frame, applied about the end effector, plus the absolute gripper
  closure in [0, 1] (0 open). Exactly :class:`pld_msgs.msg.DeltaPoseCommand`.
- Proprioception (8): ``x y z qx qy qz qw closure``. The measured end-effector position (m) and
  orientation (unit quaternion with ``qw >= 0``, so that one rotation has one encoding) in the
  base frame, and the measured gripper closure.
- Views: rgb8 ``H x W x 3`` uint8 policy views in the profile's view order, stacked ``V x H x W x 3``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pld_ros.core.spatial import Pose

Float32Array = npt.NDArray[np.float32]

ACTION_DIM = 7
PROPRIO_DIM = 8
GRIPPER = 6
"""Index of the gripper closure in an action."""


def proprio_vector(pose: Pose, gripper_closure: float) -> Float32Array:
    """The proprioception vector of a measured pose and gripper closure (float32)."""
    quaternion = np.asarray(pose.orientation, dtype=np.float64)
    if quaternion[3] < 0.0:
        quaternion = -quaternion
    return np.concatenate([pose.position, quaternion, [gripper_closure]]).astype(np.float32)


def hold_action(gripper: float) -> Float32Array:
    """The action that keeps the arm where it is and the gripper at ``gripper``."""
    action = np.zeros(ACTION_DIM, dtype=np.float32)
    action[GRIPPER] = gripper
    return action


@dataclass(frozen=True)
class Observation:
    """One control tick's inputs to a policy."""

    views: Mapping[str, np.ndarray]
    """Policy views by camera name, each H x W x 3 uint8."""
    proprio: Float32Array
    """PROPRIO_DIM float32."""
    prompt: str
    stamp: float
    """Capture time of the oldest input, s (the observation is no newer than this)."""

    def stacked_views(self, order: Sequence[str]) -> np.ndarray:
        """V x H x W x 3 uint8 in ``order``; raise KeyError naming a missing view."""
        missing = [name for name in order if name not in self.views]
        if missing:
            raise KeyError(f"observation has no view {', '.join(missing)} (has {', '.join(self.views)})")
        return np.stack([self.views[name] for name in order])
