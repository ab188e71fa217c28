"""The simulated franka_pick_cube graph with every node a process of its own, for fault injection.

`pld launch` stops the whole graph when a required node exits; a fault test must kill, pause and
restart one node while the others go on. So the nodes of the profile's graph
(:func:`pld_ros.graph.build_graph`, the same nodes and parameters `pld launch` starts) are
started one by one here, with the launcher's own command lines, and the test process watches the
graph over DDS from a probe whose executor spins in a thread of its own (a test that sleeps or
waits for a process still records every state).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

from pld_msgs.msg import DeltaPoseCommand, EpisodeEvent, PolicyWeights, RobotState
from pld_ros.graph import NodeSpec, ParameterValue, build_graph
from pld_ros.launcher import node_command, write_params_file
from pld_ros.nodes.qos import EVENTS_QOS
from pld_ros.profile import Profile, load_profile
from tests.processes import Watched
from tests.ros_probe import RosProbe

RELIABLE = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
"""Deep enough that nothing a 20 Hz publisher sends is lost while the probe's thread is busy."""
STOP_GRACE = 10.0
"""s a node gets to exit after SIGINT before it is killed (a loaded machine shuts down slowly)."""


class GraphProcesses:
    """The nodes of a profile's graph, each its own process, started, killed and restarted by name."""

    def __init__(
        self,
        profile_path: Path,
        *,
        parameters: dict[str, dict[str, ParameterValue]] | None = None,
        without: tuple[str, ...] = ("health_monitor",),
    ) -> None:
        """``parameters``: extra parameters by node name (e.g. a camera node's playback file).
        ``without``: nodes not started (the health monitor, which only watches)."""
        self.profile: Profile = load_profile(profile_path)
        graph = build_graph(self.profile, profile_path)
        extra = parameters or {}
        self.specs: dict[str, NodeSpec] = {
            spec.name: replace(spec, parameters={**spec.parameters, **extra.get(spec.name, {})})
            for spec in graph.nodes
            if spec.name not in without
        }
        self._params_dir = profile_path.parent / "params"
        self._params_dir.mkdir(exist_ok=True)
        self.running: dict[str, Watched] = {}
        self.finished: list[tuple[str, Watched]] = []
        """Processes that exited or were killed, for the output of a failed test."""

    def start(self, name: str) -> Watched:
        spec = self.specs[name]
        process = Watched(node_command(spec, write_params_file(spec, self._params_dir)))
        self.running[name] = process
        return process

    def start_all(self) -> None:
        for name in self.specs:
            self.start(name)

    def pid(self, name: str) -> int:
        return int(self.running[name].process.pid)

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.running[name].process.send_signal(sig)

    def kill(self, name: str) -> None:
        """SIGKILL: the node gets no chance to clean up, as on a crash or a power cut."""
        process = self.running.pop(name)
        process.kill()
        process.wait_exit(STOP_GRACE)
        self.finished.append((name, process))

    def stop_all(self) -> None:
        """SIGINT every node (the supervisor first, so the run ends before its inputs go), then kill
        what is left."""
        order = sorted(self.running, key=lambda name: name != "supervisor")
        for name in order:
            if self.running[name].process.poll() is None:
                self.running[name].process.send_signal(signal.SIGINT)
        end = time.monotonic() + STOP_GRACE
        for name in order:
            process = self.running[name]
            with contextlib.suppress(subprocess.TimeoutExpired):  # one that does not stop is killed
                process.wait_exit(max(0.1, end - time.monotonic()))
            process.kill()
            self.finished.append((name, process))
        self.running.clear()

    def output(self) -> str:
        """The last lines of every node, for a failed test's report."""
        for process in self.running.values():
            with contextlib.suppress(AssertionError):  # no line matches: it only collects them
                process.wait_for(r"(?!)", timeout=0.2)
        parts = [f"--- {name} (exited)\n" + process.output[-3000:] for name, process in self.finished]
        parts += [f"--- {name}\n" + process.output[-3000:] for name, process in self.running.items()]
        return "\n".join(parts)


@dataclass(frozen=True)
class Diagnostic:
    """One status of one /diagnostics report, as it arrived."""

    received: float
    """time.monotonic() at arrival."""
    name: str
    level: int
    message: str
    values: dict[str, str]


class GraphProbe(RosProbe):
    """Records what the graph says (states, commands, episode events, weights, diagnostics) from a
    thread of its own; the lists only grow, so a test reads them as they are."""

    def __init__(self, arm: str = "arm") -> None:
        super().__init__("fault_probe")
        self.states: list[tuple[float, RobotState]] = []
        self.commands: list[tuple[float, DeltaPoseCommand]] = []
        self.events: list[EpisodeEvent] = []
        self.diagnostics: list[Diagnostic] = []
        node = self.node
        node.create_subscription(RobotState, f"/{arm}/state", self._stamped(self.states), RELIABLE)
        node.create_subscription(DeltaPoseCommand, f"/{arm}/command", self._stamped(self.commands), RELIABLE)
        node.create_subscription(EpisodeEvent, "/episode/events", self.events.append, EVENTS_QOS)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, RELIABLE)
        self.weights = node.create_publisher(PolicyWeights, "/policy/residual/weights", EVENTS_QOS)
        self.arm_commands = node.create_publisher(DeltaPoseCommand, f"/{arm}/command", 10)
        self._running = True
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._spin, name="probe", daemon=True)
        self._thread.start()

    @staticmethod
    def _stamped(into: list[tuple[float, Any]]) -> Callable[[Any], None]:
        return lambda message: into.append((time.monotonic(), message))

    def _on_diagnostics(self, array: DiagnosticArray) -> None:
        now = time.monotonic()
        for status in array.status:
            values = {kv.key: kv.value for kv in status.values}
            level = status.level[0] if isinstance(status.level, bytes) else int(status.level)
            self.diagnostics.append(Diagnostic(now, status.name, level, status.message, values))

    def _spin(self) -> None:
        executor: SingleThreadedExecutor = self.executor
        while self._running:
            with self._lock:
                executor.spin_once(timeout_sec=0.02)

    def publish(self, publish: Callable[[], None]) -> None:
        """Publish from the test thread without racing the spinning thread."""
        with self._lock:
            publish()

    def wait(self, done: Callable[[], bool], timeout: float, what: Callable[[], str] | str) -> None:
        """Wait (the thread records meanwhile) until ``done()``; fail naming ``what`` after ``timeout``."""
        end = time.monotonic() + timeout
        while not done():
            if time.monotonic() > end:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what() if callable(what) else what}"
                )
            time.sleep(0.05)

    def ended(self, after: int = -1) -> list[EpisodeEvent]:
        """ENDED events of episodes with an id above ``after``."""
        return [e for e in list(self.events) if e.event == EpisodeEvent.ENDED and e.episode_id > after]

    def started(self, after: int = -1) -> list[EpisodeEvent]:
        return [e for e in list(self.events) if e.event == EpisodeEvent.STARTED and e.episode_id > after]

    def last_episode(self) -> int:
        """The id of the newest episode started, -1 before the first."""
        started = self.started()
        return int(started[-1].episode_id) if started else -1

    def diagnostic(self, name: str, since: float = -1.0) -> list[Diagnostic]:
        return [d for d in list(self.diagnostics) if d.name == name and d.received > since]

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=5.0)
        super().close()
