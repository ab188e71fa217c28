"""Publish a node's status on /diagnostics, where rqt's Robot Monitor reads it, and its key
numbers as plain ``std_msgs/Float64`` topics, which rqt_plot draws (docs/monitoring.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.publisher import Publisher
from std_msgs.msg import Float64

DIAGNOSTICS_TOPIC = "/diagnostics"
METRICS = "metrics"
"""Last name segment before a metric's own: ``<prefix>/metrics/<key>``."""


def diagnostics_publisher(node: Node) -> Publisher:
    return node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)


def make_status(
    *, level: bytes, name: str, hardware_id: str, message: str, values: Mapping[str, object]
) -> DiagnosticStatus:
    """One DiagnosticStatus with ``values`` as its key-value pairs (``str()`` of each value)."""
    return DiagnosticStatus(
        level=level,
        name=name,
        hardware_id=hardware_id,
        message=message,
        values=[KeyValue(key=key, value=str(value)) for key, value in values.items()],
    )


def publish_statuses(node: Node, publisher: Publisher, statuses: Sequence[DiagnosticStatus]) -> None:
    """Several statuses in one DiagnosticArray, stamped now."""
    array = DiagnosticArray(status=list(statuses))
    array.header.stamp = node.get_clock().now().to_msg()
    publisher.publish(array)


def publish_status(
    node: Node,
    publisher: Publisher,
    *,
    level: bytes,
    name: str,
    hardware_id: str,
    message: str,
    values: Mapping[str, object],
) -> None:
    """One DiagnosticStatus, stamped now, with ``values`` as its key-value pairs."""
    status = make_status(level=level, name=name, hardware_id=hardware_id, message=message, values=values)
    publish_statuses(node, publisher, [status])


class MetricTopics:
    """A node's key numbers, each on its own ``std_msgs/Float64`` topic ``<prefix>/metrics/<key>``.

    rqt_plot cannot read the string key-values of /diagnostics; it plots a message field, e.g.
    ``/arm/metrics/loop_period_p99_ms/data``. ``prefix`` is relative (under the node's namespace)
    unless it starts with ``/``. Publishers are made on a key's first value, so a node publishes
    only the metrics it has.
    """

    def __init__(self, node: Node, prefix: str) -> None:
        self._node = node
        self._prefix = f"{prefix.rstrip('/')}/{METRICS}" if prefix else METRICS
        self._publishers: dict[str, Publisher] = {}

    def topic(self, key: str) -> str:
        return f"{self._prefix}/{key}"

    def publish(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            publisher = self._publishers.get(key)
            if publisher is None:
                publisher = self._node.create_publisher(Float64, self.topic(key), 10)
                self._publishers[key] = publisher
            publisher.publish(Float64(data=float(value)))
