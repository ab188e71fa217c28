"""Watch the graph's heartbeats and publish each node's liveness as diagnostics.

A node that stops beating is reported STALE (ERROR level) on /diagnostics, where
rqt_robot_monitor shows it and the supervisor treats it as a fault.
"""

from __future__ import annotations

import sys

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node
from std_msgs.msg import Header

from pld_ros.core.liveness import Liveness
from pld_ros.graph import HEARTBEAT_TOPIC
from pld_ros.nodes.diagnostics import MetricTopics, diagnostics_publisher, make_status, publish_statuses
from pld_ros.nodes.runner import NodeConfigError, run_node


class HealthMonitorNode(Node):
    def __init__(self) -> None:
        super().__init__("health_monitor")
        stale_after = float(self.declare_parameter("stale_after", 2.0).value)
        period = float(self.declare_parameter("period", 1.0).value)
        expected: list[str] = self.declare_parameter("expected", [""]).value
        if not stale_after > 0.0 or not period > 0.0:
            raise NodeConfigError(f"'stale_after' ({stale_after}) and 'period' ({period}) must be positive")
        self._liveness = Liveness(stale_after=stale_after, expected=[e for e in expected if e])
        self._diagnostics = diagnostics_publisher(self)
        self._metrics = MetricTopics(self, "health")
        self.create_subscription(Header, HEARTBEAT_TOPIC, self._on_heartbeat, 50)
        self.create_timer(period, self._report)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_heartbeat(self, msg: Header) -> None:
        if self._liveness.beat(msg.frame_id, self._now()):
            self.get_logger().info(f"'{msg.frame_id}' is alive")

    def _report(self) -> None:
        now = self._now()
        for change in self._liveness.newly_stale(now):
            self.get_logger().error(f"'{change}' stopped beating")
        states = self._liveness.states(now)
        publish_statuses(
            self,
            self._diagnostics,
            [
                make_status(
                    level=DiagnosticStatus.OK if state.alive else DiagnosticStatus.ERROR,
                    name=f"pld/liveness{source}",
                    hardware_id=source,
                    message=state.describe(),
                    values={"age": f"{state.age:.3f}" if state.age is not None else "never"},
                )
                for source, state in states
            ],
        )
        alive = sum(state.alive for _, state in states)
        self._metrics.publish({"alive_nodes": alive, "not_alive_nodes": len(states) - alive})


def main() -> None:
    sys.exit(run_node(HealthMonitorNode))


if __name__ == "__main__":
    main()
