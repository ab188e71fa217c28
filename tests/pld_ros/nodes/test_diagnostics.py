"""The shared diagnostics helpers over DDS: a metric topic per key (for rqt_plot) and several
statuses in one /diagnostics array."""

from __future__ import annotations

import os

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from std_msgs.msg import Float64

from pld_ros.nodes.diagnostics import MetricTopics, diagnostics_publisher, make_status, publish_statuses
from tests.ros_probe import RosProbe

pytestmark = pytest.mark.ros

NAMESPACE = f"/diagnostics_test_{os.getpid()}"


def test_metrics_go_to_one_float_topic_each_and_statuses_share_one_array() -> None:
    with RosProbe("node_under_test", NAMESPACE) as node, RosProbe("listener", NAMESPACE) as listener:
        metrics = MetricTopics(node.node, "arm")
        assert metrics.topic("loop_period_p99_ms") == "arm/metrics/loop_period_p99_ms"
        heard: dict[str, list[float]] = {"loop_period_p99_ms": [], "deadline_misses": []}
        for key, values in heard.items():
            listener.node.create_subscription(
                Float64, f"arm/metrics/{key}", lambda m, values=values: values.append(m.data), 10
            )
        arrays: list[DiagnosticArray] = []
        listener.node.create_subscription(DiagnosticArray, "/diagnostics", arrays.append, 10)
        diagnostics = diagnostics_publisher(node.node)

        def publish() -> None:
            metrics.publish({"loop_period_p99_ms": 51.5, "deadline_misses": 2})
            statuses = [
                make_status(
                    level=DiagnosticStatus.OK, name=f"{NAMESPACE}/a", hardware_id="", message="", values={}
                ),
                make_status(
                    level=DiagnosticStatus.ERROR,
                    name=f"{NAMESPACE}/b",
                    hardware_id="hw",
                    message="bad",
                    values={"n": 3},
                ),
            ]
            publish_statuses(node.node, diagnostics, statuses)

        def heard_all() -> bool:
            publish()
            node.spin_for(0.05)
            return all(heard.values()) and any(
                a.status and a.status[0].name == f"{NAMESPACE}/a" for a in arrays
            )

        listener.spin_until(heard_all, 20.0, "the metrics and the diagnostics")
        assert heard["loop_period_p99_ms"][-1] == 51.5 and heard["deadline_misses"][-1] == 2.0
        array = next(a for a in arrays if a.status and a.status[0].name == f"{NAMESPACE}/a")
        assert [s.name for s in array.status] == [f"{NAMESPACE}/a", f"{NAMESPACE}/b"]
        second = array.status[1]
        assert second.level == DiagnosticStatus.ERROR and second.message == "bad"
        assert [(kv.key, kv.value) for kv in second.values] == [("n", "3")]
        assert array.header.stamp.sec > 0
