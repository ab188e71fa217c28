"""Start, spin and stop a node the same way for every pld executable."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node

from pld_ros.profile import Profile, ProfileError, load_profile

EXIT_CONFIG_ERROR = 2
"""Exit code of a node that refuses its parameters: nothing was started, nothing to recover."""
EXIT_FATAL = 1
"""Exit code of a node that stopped itself through :func:`fail_node`."""

# One node per process: the reason its own thread gave for stopping it, if any.
_fatal_reason: str | None = None


def fail_node(node: Node, reason: str) -> None:
    """Stop a node from any thread (e.g. its control thread) and make the process exit with 1."""
    global _fatal_reason
    _fatal_reason = reason
    node.get_logger().fatal(reason)
    node.context.try_shutdown()


class NodeConfigError(ValueError):
    """A node's parameters are unusable; the message says which one and why."""


def load_node_profile(node: Node) -> Profile:
    """Declare the node's ``profile`` parameter (the profile YAML's path) and load that profile."""
    path = str(node.declare_parameter("profile", "").value)
    if not path:
        raise NodeConfigError("parameter 'profile' (path of the profile YAML) is required")
    try:
        return load_profile(path)
    except ProfileError as exc:
        raise NodeConfigError(str(exc)) from None


def control_arm(profile: Profile) -> str:
    """The profile's control arm (:attr:`Profile.control_arm`), or a configuration error."""
    try:
        return profile.control_arm
    except ValueError as exc:
        raise NodeConfigError(str(exc)) from None


def _stop_without_raising(signum: int, frame: object) -> None:
    # rclpy's own handler has already shut the context down, which ends the spin; it then calls
    # this one. Python's default would raise KeyboardInterrupt wherever the main thread happens to
    # be, e.g. inside a finalizer, where it is printed as a traceback and lost. A second Ctrl-C
    # raises, for a shutdown that hangs.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run_node(factory: Callable[[], Node], args: Sequence[str] | None = None, *, threads: int = 1) -> int:
    """Init rclpy, build the node, spin until SIGINT/SIGTERM, and shut down cleanly.

    ``threads`` > 1 spins callbacks on that many threads, so that a callback group of its own may
    block (e.g. a service that waits for a motion) while the others run.
    Returns the process exit code: 0 after a requested shutdown, 2 for a configuration error.
    """
    signal.signal(signal.SIGINT, _stop_without_raising)
    rclpy.init(args=list(args) if args is not None else sys.argv)
    node: Node | None = None
    executor: Executor | None = None
    try:
        node = factory()
        executor = MultiThreadedExecutor(threads) if threads > 1 else SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except NodeConfigError as exc:
        # The node may not exist yet, so log through rclpy's module logger.
        rclpy.logging.get_logger("pld").fatal(f"configuration error: {exc}")
        return EXIT_CONFIG_ERROR
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # SIGINT/SIGTERM shut rclpy down from the signal handler; a callback publishing at that
        # moment fails with "context is invalid". That is a clean stop, not a crash.
        if rclpy.ok():
            raise
    finally:
        # The node first: its destroy_node answers what a callback may still wait for (the arm
        # driver's home call), so that shutting the executor down, which joins its threads, ends.
        if node is not None:
            node.destroy_node()
        if executor is not None:
            executor.shutdown()
        rclpy.try_shutdown()
    return EXIT_FATAL if _fatal_reason is not None else 0
