"""Quality-of-service profiles that publishers and subscribers of one topic must agree on.

A reliable, transient-local subscriber is matched only by a publisher that offers the same, so the
nodes on both ends of these topics take their profile from here.
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

EVENTS_QOS = QoSProfile(
    depth=50, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
"""``episode/events``: a node that joins late (the recorder, a dashboard) still gets the recent
episode events."""
LATCHED_QOS = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
"""The latest message only, kept for late joiners: ``loop/stats`` for a dashboard that starts
later, ``policy/residual/weights`` for a residual policy node that (re)starts after the trainer
published."""
