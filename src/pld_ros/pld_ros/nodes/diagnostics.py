"""Publish a node's status on /diagnostics, where rqt's Robot Monitor reads it."""

from __future__ import annotations

from collections.abc import Mapping

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.publisher import Publisher

DIAGNOSTICS_TOPIC = "/diagnostics"


def diagnostics_publisher(node: Node) -> Publisher:
    return node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)


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
    status = DiagnosticStatus(
        level=level,
        name=name,
        hardware_id=hardware_id,
        message=message,
        values=[KeyValue(key=key, value=str(value)) for key, value in values.items()],
    )
    array = DiagnosticArray(status=[status])
    array.header.stamp = node.get_clock().now().to_msg()
    publisher.publish(array)
