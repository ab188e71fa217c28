"""How every pld executable stops: a node process Ctrl-C'd at an awkward moment."""

from __future__ import annotations

import sys
import textwrap
import time

import pytest

from tests.processes import Watched

pytestmark = pytest.mark.ros

# A node whose main thread spends its time in finalizers when the Ctrl-C comes: Python's default
# handler raises KeyboardInterrupt inside one of them, where it is printed and swallowed.
_BUSY_IN_FINALIZERS = textwrap.dedent(
    """
    import time
    from rclpy.node import Node
    from pld_ros.nodes.runner import run_node

    class Slow:
        def __del__(self) -> None:
            end = time.monotonic() + 0.01
            while time.monotonic() < end:
                pass

    class Busy(Node):
        def __init__(self) -> None:
            super().__init__("busy")
            self.create_timer(0.01, self.churn)
            self.get_logger().info("spinning")

        def churn(self) -> None:
            while self.context.ok():
                Slow()

    raise SystemExit(run_node(Busy))
    """
)


def test_a_ctrl_c_arriving_inside_a_finalizer_stops_the_node_without_a_traceback() -> None:
    with Watched([sys.executable, "-c", _BUSY_IN_FINALIZERS]) as node:
        node.wait_for("spinning", 30)
        time.sleep(1)  # into the timer's churn
        node.stop_cleanly()
