"""Turn the graph's topics into policy observations (see :mod:`pld_ros.core.observation`).

The base policy, residual and reward nodes all see the same thing: the newest policy views of
their cameras, matched within a frame period by :class:`~pld_ros.core.frame_sync.FrameSync`, and
the arm state that ticks the control loop.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.node import Node
from sensor_msgs.msg import Image

from pld_msgs.msg import RobotState
from pld_ros.core.frame_sync import FrameSync, NoSet, SyncedSet
from pld_ros.core.messages import image_array, proprio_of
from pld_ros.core.observation import Observation
from pld_ros.nodes.camera_publisher import SENSOR_QOS


def seconds(stamp: Time) -> float:
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


class ViewCache:
    """The newest matched policy views of ``views``, subscribed on ``cameras/<view>/policy_view``."""

    def __init__(self, node: Node, views: Sequence[str], stale_after: float, frame_period: float) -> None:
        self.views = tuple(views)
        self._sync: FrameSync[np.ndarray] = FrameSync(
            self.views, tolerance=frame_period, stale_after=stale_after
        )
        # Images arrive on the executor's thread; policies may read from a worker thread.
        self._lock = threading.Lock()
        for view in self.views:
            node.create_subscription(
                Image,
                f"cameras/{view}/policy_view",
                lambda msg, view=view: self._on_image(view, msg),
                SENSOR_QOS,
            )

    def _on_image(self, view: str, message: Image) -> None:
        frame = image_array(message)
        with self._lock:
            self._sync.add(view, seconds(message.header.stamp), frame)

    def newest(self, now: float) -> SyncedSet[np.ndarray] | NoSet:
        with self._lock:
            return self._sync.newest(now)

    def observation(self, state: RobotState, prompt: str, now: float) -> Observation | NoSet:
        """The observation at the tick of ``state``, or why there is none (a stale camera)."""
        views = self.newest(now)
        if isinstance(views, NoSet):
            return views
        return Observation(
            views=dict(views.items),
            proprio=proprio_of(state),
            prompt=prompt,
            stamp=min(views.stamp, seconds(state.header.stamp)),
        )
