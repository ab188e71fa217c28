"""Reading the project's messages into the core's values, without importing ROS.

The functions only read message attributes, so they take rclpy's generated classes in the nodes
and rosbags' deserialized classes in the bag tools (:mod:`pld_ros.data.bag_episodes`) alike: one
definition of how a ``RobotState``, a ``DeltaPoseCommand`` or an ``Image`` maps to arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from pld_ros.core.observation import Float32Array, proprio_vector
from pld_ros.core.spatial import Pose


def pose_of(message: Any) -> Pose:
    """A ``geometry_msgs/Pose`` as a :class:`Pose`; ValueError for an invalid orientation."""
    p, q = message.position, message.orientation
    return Pose.of((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))


def proprio_of(state: Any) -> Float32Array:
    """A ``pld_msgs/RobotState`` as the policies' proprioception vector."""
    return proprio_vector(pose_of(state.ee_pose), float(state.gripper_closure))


def action_of(command: Any) -> Float32Array:
    """A ``pld_msgs/DeltaPoseCommand`` as the 7-D action (translation, rotation vector, gripper)."""
    t, r = command.translation, command.rotation
    return np.array([t.x, t.y, t.z, r.x, r.y, r.z, command.gripper], dtype=np.float32)


def image_array(message: Any) -> npt.NDArray[np.uint8]:
    """An rgb8 ``sensor_msgs/Image`` as ``H x W x 3`` uint8, a view of the message's buffer (rclpy's
    array or bytes, rosbags' numpy array). ValueError for another encoding or sizes that do not fit
    the data."""
    if message.encoding != "rgb8":
        raise ValueError(f"expected an rgb8 image, got {message.encoding!r}")
    height, width, step = int(message.height), int(message.width), int(message.step)
    data = np.frombuffer(message.data, dtype=np.uint8)
    if height == 0 or width == 0 or step < 3 * width or len(data) < height * step:
        raise ValueError(
            f"image of {width}x{height} with a row step of {step} does not fit its {len(data)} bytes"
        )
    rows = data[: height * step].reshape(height, step)
    return rows[:, : 3 * width].reshape(height, width, 3)
