"""Publish this process's liveness at a fixed rate on the graph's heartbeat topic."""

from __future__ import annotations

import sys

from rclpy.node import Node
from std_msgs.msg import Header

from pld_ros.graph import HEARTBEAT_TOPIC
from pld_ros.nodes.runner import NodeConfigError, run_node


class HeartbeatNode(Node):
    def __init__(self) -> None:
        super().__init__("heartbeat")
        rate = float(self.declare_parameter("rate", 2.0).value)
        if not rate > 0.0:
            raise NodeConfigError(f"parameter 'rate' must be positive, got {rate}")
        self._publisher = self.create_publisher(Header, HEARTBEAT_TOPIC, 10)
        self._timer = self.create_timer(1.0 / rate, self._beat)

    def _beat(self) -> None:
        self._publisher.publish(
            Header(stamp=self.get_clock().now().to_msg(), frame_id=self.get_fully_qualified_name())
        )


def main() -> None:
    sys.exit(run_node(HeartbeatNode))


if __name__ == "__main__":
    main()
