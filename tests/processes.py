"""Run a command in the background and watch its output line by line (for process-level tests)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from typing_extensions import Self


def _normal_scheduling() -> None:
    # After a franky test the test thread runs SCHED_FIFO 99 (libfranka raises the thread that
    # talks to a robot); a child started from it must not inherit that.
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


class Watched:
    def __init__(self, argv: Sequence[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self.process = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            preexec_fn=_normal_scheduling,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Block until a line matches; fail with everything seen so far if none does in time."""
        regex = re.compile(pattern)
        for line in self.lines:
            if match := regex.search(line):
                return match
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            self.lines.append(line)
            if match := regex.search(line):
                return match
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n" + "\n".join(self.lines))

    def wait_exit(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        time.sleep(0.2)  # let the reader drain the pipe
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def interrupt(self, timeout: float = 10.0) -> int:
        """Ctrl-C the process (unless it has ended) and wait for its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.wait_exit(timeout)

    def stop_cleanly(self, timeout: float = 10.0) -> None:
        """Ctrl-C the process and require what a node owes it: exit code 0 and no traceback."""
        code = self.interrupt(timeout)
        assert code == 0, f"exit code {code}:\n{self.output}"
        assert "Traceback" not in self.output, self.output

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        """Leave nothing running, whatever the test did: Ctrl-C, then a kill if that was not enough."""
        try:
            self.interrupt()
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.kill()


def node_process(module: str, namespace: str, profile: Path, **parameters: str) -> Watched:
    """A pld_ros node module run as its own process in ``namespace`` with a profile."""
    arguments = [f"{key}:={value}" for key, value in {"profile": str(profile), **parameters}.items()]
    return Watched(
        [
            sys.executable,
            "-m",
            module,
            "--ros-args",
            "-r",
            f"__ns:={namespace}",
            *(part for argument in arguments for part in ("-p", argument)),
        ]
    )
