"""Publish this process's liveness at a fixed rate on the graph's heartbeat topic."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rclpy.node import Node
from rclpy.timer import Timer
from std_msgs.msg import Header

from pld_ros.graph import HEARTBEAT_TOPIC
from pld_ros.nodes.runner import NodeConfigError, run_node


def start_heartbeat(node: Node, rate: float = 2.0, ready: Callable[[], bool] | None = None) -> Timer:
    """Publish ``node``'s liveness on the heartbeat topic at ``rate`` Hz, from its executor.

    Beating from the executor means a node whose callbacks are stuck also stops beating. With
    ``ready``, the node beats only while it returns true (e.g. once its inputs are connected).
    """
    publisher = node.create_publisher(Header, HEARTBEAT_TOPIC, 10)
    name = node.get_fully_qualified_name()

    def beat() -> None:
        if ready is None or ready():
            publisher.publish(Header(stamp=node.get_clock().now().to_msg(), frame_id=name))

    return node.create_timer(1.0 / rate, beat)


class HeartbeatNode(Node):
    def __init__(self) -> None:
        super().__init__("heartbeat")
        rate = float(self.declare_parameter("rate", 2.0).value)
        if not rate > 0.0:
            raise NodeConfigError(f"parameter 'rate' must be positive, got {rate}")
        self._timer = start_heartbeat(self, rate)


def main() -> None:
    sys.exit(run_node(HeartbeatNode))


if __name__ == "__main__":
    main()
