"""What the soak benchmarks share: an output directory with an overlay profile, the graph as one
``pld launch`` child process, the resources of its processes read from /proc, and the loop
report of a YAM run."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pld_ros.core.episode_log import EpisodeRecord
from pld_ros.core.loop_stats import format_loop_summary, plot_loop, summarize_loop

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def add_common_arguments(parser: argparse.ArgumentParser, *, minutes: float, out: str) -> None:
    parser.add_argument("--minutes", type=float, default=minutes)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(out))


def fresh_directory(path: Path) -> Path:
    """``path`` made absolute (profiles resolve relative paths against their own directory) and
    emptied, so a rerun never mixes with an older run's files."""
    path = path.resolve()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_overlay_profile(out: Path, extends: Path, overrides: Mapping[str, Any]) -> Path:
    """A profile in ``out`` that extends ``extends`` with ``overrides`` (the soak's own
    directories, extra nodes), leaving the profiles in config/ untouched."""
    path = out / f"soak_{extends.stem}.yaml"
    path.write_text(yaml.safe_dump({"extends": str(extends), **overrides}))
    return path


@contextmanager
def launched_graph(profile: Path, minutes: float, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``pld launch PROFILE --duration`` with its output in ``log_path``; on leaving, the graph is
    stopped (SIGINT, as Ctrl-C would) and awaited."""
    with log_path.open("w") as log:
        graph = subprocess.Popen(
            [sys.executable, "-m", "pld_ros.cli", "launch", str(profile), "--duration", str(minutes * 60.0)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield graph
        finally:
            if graph.poll() is None:
                graph.send_signal(2)
            graph.wait()


@dataclass(frozen=True)
class ProcessSample:
    """One process of the graph at one moment."""

    seconds: float
    name: str
    pid: int
    rss_mb: float
    fds: int
    threads: int


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with os.scandir(f"/proc/{pid}/task") as tasks:
        for task in tasks:
            try:
                text = Path(task.path, "children").read_text()
            except OSError:
                continue
            found.extend(int(child) for child in text.split())
    return found


def _name(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    for arg in argv:
        if arg.startswith(b"__node:="):
            return arg.split(b"=", 1)[1].decode()
    return Path(argv[0].decode()).name


def sample_processes(root: int, seconds: float) -> list[ProcessSample]:
    """Resident memory, open file descriptors and threads of ``root`` and all its descendants
    (the launcher, every node, and what nodes start, such as franky-sim). Processes that end
    while being read are skipped."""
    samples: list[ProcessSample] = []
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            pending.extend(_children(pid))
            resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            threads = len(os.listdir(f"/proc/{pid}/task"))
            name = "launcher" if pid == root else _name(pid)
        except (OSError, ValueError, IndexError):
            continue
        samples.append(ProcessSample(seconds, name, pid, resident_pages * PAGE_KB / 1024.0, fds, threads))
    return samples


def print_loop_report(records: list[EpisodeRecord], out: Path) -> Path:
    """Print the ``pld runs loop`` table of a YAM run and plot it into ``out/loop.png``."""
    plot = plot_loop(records, out / "loop.png")
    print(format_loop_summary(summarize_loop(records)))
    return plot
