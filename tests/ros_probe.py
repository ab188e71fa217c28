"""A test's own ROS 2 node, in a context of its own, for tests that talk to nodes over DDS."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from typing_extensions import Self


class RosProbe:
    """Subscribe, publish and call services from the test process; close() when done.

    A context of its own keeps one test's node from leaking into the next through rclpy's
    global state.
    """

    def __init__(self, name: str, namespace: str = "") -> None:
        """``namespace``: the probe node's, e.g. one of its own per test run, as another test
        session may share the DDS domain."""
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = Node(name, namespace=namespace, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, done: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
        """Process callbacks until ``done()`` holds; fail naming ``what`` after ``timeout`` s (a
        callable: called then, e.g. for a process's output so far)."""
        end = time.monotonic() + timeout
        while not done() and time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)
        assert done(), f"timed out waiting for {what() if callable(what) else what}"

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.executor.spin_once(timeout_sec=left)

    def call(self, client: Any, request: Any, timeout: float = 20.0) -> Any:
        """Wait for the service, call it, and return its response."""
        self.spin_until(client.service_is_ready, timeout, f"the service {client.srv_name}")
        future = client.call_async(request)
        self.spin_until(future.done, timeout, f"a response from {client.srv_name}")
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
