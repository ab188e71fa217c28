"""start_heartbeat in a probe's own node: it beats only while the node says it is ready."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from std_msgs.msg import Header

from pld_ros.graph import HEARTBEAT_TOPIC
from pld_ros.nodes.heartbeat import start_heartbeat
from tests.ros_probe import RosProbe

pytestmark = pytest.mark.ros


@pytest.fixture
def probe() -> Iterator[RosProbe]:
    with RosProbe("heartbeat_probe", namespace=f"/heartbeat_test_{os.getpid()}") as p:
        yield p


def test_a_node_beats_only_while_it_is_ready(probe: RosProbe) -> None:
    name = probe.node.get_fully_qualified_name()
    beats: list[Header] = []
    probe.node.create_subscription(
        Header, HEARTBEAT_TOPIC, lambda m: beats.append(m) if m.frame_id == name else None, 10
    )
    ready = False
    start_heartbeat(probe.node, rate=20.0, ready=lambda: ready)
    probe.spin_for(0.5)
    assert not beats
    ready = True
    probe.spin_until(lambda: len(beats) >= 3, 5.0, "three heartbeats")
