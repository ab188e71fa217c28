"""Run a node graph as processes where ROS 2's ``launch`` is not installed (``pld launch``).

Each node runs in its own process and session, so that a terminal's Ctrl-C reaches only the
launcher, which then stops the nodes in order: SIGINT, then SIGTERM, then SIGKILL, each after a
grace period. Node output is prefixed with the node's name. A node that exits on its own is
reported with its exit code (or signal) and its last lines of output; unless it is marked for
respawn, its exit stops the whole graph, as ``launch_ros`` does for a required node. A node that
ends the run (the supervisor after its episodes) stops the graph without failure when it exits
cleanly.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import yaml

from pld_ros.executables import NODE_EXECUTABLES
from pld_ros.graph import Graph, NodeSpec

_PR_SET_PDEATHSIG = 1


class LaunchError(RuntimeError):
    """The graph cannot be started (an executable is missing, say); nothing was started."""


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: tuple[str, ...]
    respawn: bool = False
    respawn_delay: float = 1.0
    ends_run: bool = False


@dataclass(frozen=True)
class NodeExit:
    name: str
    returncode: int
    last_output: tuple[str, ...]

    @property
    def cause(self) -> str:
        if self.returncode < 0:
            try:
                signame = signal.Signals(-self.returncode).name
            except ValueError:
                signame = f"signal {-self.returncode}"
            return f"killed by {signame} (exit {self.returncode})"
        return f"exited with code {self.returncode}"


@dataclass
class RunReport:
    """How a run ended. ``failed`` lists nodes that exited without being asked to."""

    reason: str
    failed: list[NodeExit] = field(default_factory=list)
    respawns: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def _prepare_child() -> None:
    # Runs in the child between fork and exec. If the launcher is killed outright (SIGKILL), the
    # kernel sends SIGTERM to its nodes instead of leaving them commanding a robot unsupervised.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    # A child inherits its parent thread's scheduling; libfranka raises a thread that talks to a
    # robot to SCHED_FIFO 99. Nodes start at normal priority and raise their own threads.
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def _ament_executable(package: str, executable: str) -> Path | None:
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if not prefix:
            continue
        candidate = Path(prefix) / "lib" / package / executable
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def node_command(spec: NodeSpec, params_file: Path) -> tuple[str, ...]:
    """The command line of one node: its program, then the ROS arguments launch_ros would pass."""
    if spec.package == "pld_ros":
        module = NODE_EXECUTABLES.get(spec.executable)
        if module is None or importlib.util.find_spec(module) is None:
            raise LaunchError(
                f"node {spec.name!r}: pld_ros has no executable {spec.executable!r} "
                f"(available: {', '.join(sorted(NODE_EXECUTABLES))})"
            )
        program: tuple[str, ...] = (sys.executable, "-m", module)
    else:
        path = _ament_executable(spec.package, spec.executable)
        if path is None:
            raise LaunchError(
                f"node {spec.name!r}: executable {spec.executable!r} of package {spec.package!r} "
                "not found under AMENT_PREFIX_PATH (is its workspace sourced?)"
            )
        program = (str(path),)
    ros_args = ["--ros-args", "-r", f"__node:={spec.name}"]
    if spec.namespace:
        ros_args += ["-r", f"__ns:=/{spec.namespace.strip('/')}"]
    for source, target in spec.remappings:
        ros_args += ["-r", f"{source}:={target}"]
    if spec.parameters:
        ros_args += ["--params-file", str(params_file)]
    return (*program, *ros_args)


def write_params_file(spec: NodeSpec, directory: Path) -> Path:
    """Write a node's parameters in the ROS 2 parameter-file format, keyed by its full name."""
    path = directory / f"{spec.fully_qualified_name.strip('/').replace('/', '__')}.params.yaml"
    path.write_text(yaml.safe_dump({spec.fully_qualified_name: {"ros__parameters": spec.parameters}}))
    return path


@contextmanager
def process_specs(graph: Graph) -> Iterator[list[ProcessSpec]]:
    """The processes of a graph, with their parameter files alive for the duration of the block."""
    with tempfile.TemporaryDirectory(prefix="pld-launch-") as tmp:
        specs = [
            ProcessSpec(
                name=spec.name,
                argv=node_command(spec, write_params_file(spec, Path(tmp))),
                respawn=spec.respawn,
                respawn_delay=spec.respawn_delay,
                ends_run=spec.ends_run,
            )
            for spec in graph.nodes
        ]
        yield specs


class _Child:
    def __init__(self, spec: ProcessSpec, out: TextIO, out_lock: threading.Lock, env: dict[str, str]) -> None:
        self.spec = spec
        self.tail: deque[str] = deque(maxlen=20)
        self.process = subprocess.Popen(
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_prepare_child,
            text=True,
            errors="replace",
            bufsize=1,
        )
        self.reader = threading.Thread(target=self._pump, args=(out, out_lock), daemon=True)
        self.reader.start()

    def _pump(self, out: TextIO, out_lock: threading.Lock) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            with out_lock:
                out.write(f"[{self.spec.name}] {line}\n")
                out.flush()

    def exit_record(self) -> NodeExit:
        self.reader.join(timeout=1.0)
        code = self.process.returncode
        return NodeExit(self.spec.name, 0 if code is None else code, tuple(self.tail))


class GraphRunner:
    """Start processes, watch them, and stop them all on request or when a required one dies."""

    def __init__(
        self,
        specs: Sequence[ProcessSpec],
        *,
        out: TextIO | None = None,
        sigint_grace: float = 2.5,
        sigterm_grace: float = 1.5,
        poll_interval: float = 0.05,
    ) -> None:
        self._specs = list(specs)
        self._out = out or sys.stdout
        self._lock = threading.Lock()
        self._sigint_grace = sigint_grace
        self._sigterm_grace = sigterm_grace
        self._poll = poll_interval
        self._stop_reason: str | None = None
        self._children: dict[str, _Child] = {}
        self._env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0")

    def log(self, message: str) -> None:
        with self._lock:
            self._out.write(f"[pld launch] {message}\n")
            self._out.flush()

    def request_stop(self, reason: str) -> None:
        """Ask the run to stop; safe to call from a signal handler or another thread."""
        if self._stop_reason is None:
            self._stop_reason = reason

    def run(self, duration: float | None = None) -> RunReport:
        deadline = None if duration is None else time.monotonic() + duration
        report = RunReport(reason="")
        pending_respawn: dict[str, float] = {}
        for spec in self._specs:
            self._start(spec)
        try:
            while self._stop_reason is None:
                if deadline is not None and time.monotonic() >= deadline:
                    self.request_stop(f"duration of {duration:g} s reached")
                    break
                for name, child in list(self._children.items()):
                    if child.process.poll() is None:
                        continue
                    record = child.exit_record()
                    del self._children[name]
                    self.log(f"node '{name}' {record.cause}")
                    if child.spec.ends_run and record.returncode == 0:
                        self.request_stop(f"'{name}' finished the run")
                    elif child.spec.respawn:
                        report.respawns[name] = report.respawns.get(name, 0) + 1
                        pending_respawn[name] = time.monotonic() + child.spec.respawn_delay
                        self.log(f"respawning '{name}' in {child.spec.respawn_delay:g} s")
                    else:
                        report.failed.append(record)
                        for line in record.last_output[-10:]:
                            self.log(f"  {name}> {line}")
                        self.request_stop(f"required node '{name}' {record.cause}")
                for name, when in list(pending_respawn.items()):
                    if time.monotonic() >= when and self._stop_reason is None:
                        del pending_respawn[name]
                        self._start(next(s for s in self._specs if s.name == name))
                time.sleep(self._poll)
        finally:
            report.reason = self._stop_reason or "stopped"
            self._stop_all(report)
        return report

    def _start(self, spec: ProcessSpec) -> None:
        self._children[spec.name] = _Child(spec, self._out, self._lock, self._env)
        self.log(f"started '{spec.name}' (pid {self._children[spec.name].process.pid})")

    def _signal_all(self, sig: signal.Signals) -> None:
        for child in self._children.values():
            if child.process.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(child.process.pid, sig)

    def _wait_all(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(c.process.poll() is not None for c in self._children.values()):
                return True
            time.sleep(self._poll)
        return all(c.process.poll() is not None for c in self._children.values())

    def _stop_all(self, report: RunReport) -> None:
        self.log(f"stopping: {report.reason}")
        for sig, grace in (
            (signal.SIGINT, self._sigint_grace),
            (signal.SIGTERM, self._sigterm_grace),
            (signal.SIGKILL, 1.0),
        ):
            if self._wait_all(0.0):
                break
            if sig is not signal.SIGINT:
                stubborn = [n for n, c in self._children.items() if c.process.poll() is None]
                self.log(f"escalating to {sig.name} for {', '.join(stubborn)}")
            self._signal_all(sig)
            self._wait_all(grace)
        for name, child in self._children.items():
            record = child.exit_record()
            self.log(f"node '{name}' stopped ({record.cause})")
        self._children.clear()


@contextmanager
def forward_signals(runner: GraphRunner) -> Iterator[None]:
    """Turn SIGINT and SIGTERM into an orderly stop of the runner while the block runs."""

    def handler(signum: int, _frame: object) -> None:
        runner.request_stop(f"received {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
