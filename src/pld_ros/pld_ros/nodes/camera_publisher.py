"""Publish one camera's frames as ROS topics: the full image, the policy view and camera info.

Shared by the camera node (real cameras) and the simulated worlds (rendered cameras), so a
policy cannot tell them apart by topic, encoding or crop.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from pld_ros.core.image_view import PolicyViewer
from pld_ros.profile import Camera

# Sensor data: the newest frame matters, a late one is worthless, so best effort and depth 1.
SENSOR_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)


def image_message(frame: np.ndarray, stamp: Time, frame_id: str) -> Image:
    """An rgb8 sensor_msgs/Image holding ``frame`` (H x W x 3, uint8)."""
    height, width = frame.shape[:2]
    message = Image(height=height, width=width, encoding="rgb8", is_bigendian=0, step=width * 3)
    message.header.stamp = stamp
    message.header.frame_id = frame_id
    message.data = np.ascontiguousarray(frame).tobytes()
    return message


class CameraPublisher:
    def __init__(
        self, node: Node, name: str, camera: Camera, intrinsics: tuple[float, float, float, float]
    ) -> None:
        """``intrinsics``: fx, fy, cx, cy of the full-resolution image, in pixels."""
        self.name = name
        self.frame_id = camera.frame_id or f"{name}_camera_optical_frame"
        self._viewer = PolicyViewer(camera.policy_view, camera.width, camera.height)
        prefix = f"cameras/{name}"
        self._raw = node.create_publisher(Image, f"{prefix}/image_raw", SENSOR_QOS)
        self._view = node.create_publisher(Image, f"{prefix}/policy_view", SENSOR_QOS)
        self._info_pub = node.create_publisher(CameraInfo, f"{prefix}/camera_info", SENSOR_QOS)
        fx, fy, cx, cy = intrinsics
        self._info = CameraInfo(width=camera.width, height=camera.height, distortion_model="plumb_bob")
        self._info.header.frame_id = self.frame_id
        self._info.d = [0.0] * 5
        self._info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        self._info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        self._info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]

    def publish(self, frame: np.ndarray, stamp: Time) -> None:
        """Publish a full-resolution rgb8 frame taken at ``stamp`` (the capture time, not now)."""
        # The policy view goes first: it is what the 20 Hz loop waits for.
        self._view.publish(image_message(self._viewer(frame), stamp, self.frame_id))
        if self._raw.get_subscription_count() > 0:
            self._raw.publish(image_message(frame, stamp, self.frame_id))
        self._info.header.stamp = stamp
        self._info_pub.publish(self._info)
