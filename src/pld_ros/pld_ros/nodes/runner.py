"""Start, spin and stop a node the same way for every pld executable."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

EXIT_CONFIG_ERROR = 2
"""Exit code of a node that refuses its parameters: nothing was started, nothing to recover."""


class NodeConfigError(ValueError):
    """A node's parameters are unusable; the message says which one and why."""


def run_node(factory: Callable[[], Node], args: Sequence[str] | None = None) -> int:
    """Init rclpy, build the node, spin until SIGINT/SIGTERM, and shut down cleanly.

    Returns the process exit code: 0 after a requested shutdown, 2 for a configuration error.
    """
    rclpy.init(args=list(args) if args is not None else sys.argv)
    node: Node | None = None
    try:
        node = factory()
        rclpy.spin(node)
    except NodeConfigError as exc:
        # The node may not exist yet, so log through rclpy's module logger.
        rclpy.logging.get_logger("pld").fatal(f"configuration error: {exc}")
        return EXIT_CONFIG_ERROR
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
