"""Soak of the simulated franka_pick_cube graph with the trainer in it: do memory, open files and
loop timing stay flat over an hour?

Starts ``pld launch franka_pick_cube --sim`` with the trainer as a node of the graph and the
recorder on (every node its own process, DDS between them, franky-sim under the world node), lets
the supervisor run episodes back to back for ``--minutes``, and every ``--every`` seconds reads
from /proc the resident memory, open file descriptors and threads of every process of the graph.
From the graph it records the arm driver's loop statistics and the simulator's real-time factor
(/diagnostics) and the trainer's progress (trainer/metrics). Writes ``processes.csv``,
``timing.csv``, ``soak.png`` into ``--out`` and prints, per process, memory and descriptors at
the start and the end with the slope over the second half.

    scripts/in_env.sh python -m bench.franka_graph_soak [--minutes 60] [--every 10]
        [--no-joint-homing] [--out out/franka_graph_soak]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray

from bench.soak import (
    ProcessSample,
    add_common_arguments,
    fresh_directory,
    launched_graph,
    sample_processes,
    write_overlay_profile,
)
from pld_msgs.msg import TrainingMetrics
from pld_ros.core.episode_log import read_episodes
from pld_ros.profile import default_config_dir

# The launcher's first seconds are start-up (imports, model loads): the baseline is taken after.
WARM_UP_S = 120.0


@dataclass
class TimingSample:
    """The graph's loop and learner figures at one moment (NaN until first heard)."""

    seconds: float
    loop_period_p50_ms: float = math.nan
    loop_period_p99_ms: float = math.nan
    loop_period_max_ms: float = math.nan
    loop_ticks: float = math.nan
    loop_missed_ticks: float = math.nan
    real_time_factor: float = math.nan
    trainer_updates: float = math.nan
    trainer_updates_per_s: float = math.nan
    weights_version: float = math.nan
    online_transitions: float = math.nan
    load_average: float = math.nan
    """The machine's 1-minute load average: a loop that slips on a busy machine is not a leak."""


class GraphListener:
    """Keeps the latest arm-loop, simulator and trainer figures the graph publishes."""

    def __init__(self) -> None:
        self.node = rclpy.create_node("franka_graph_soak")
        self.latest = TimingSample(0.0)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._diagnostics, 50)
        self.node.create_subscription(TrainingMetrics, "/trainer/metrics", self._metrics, 10)

    def _diagnostics(self, message: DiagnosticArray) -> None:
        for status in message.status:
            values = {item.key: item.value for item in status.values}
            if status.name.startswith("pld/arm/"):
                for key in (
                    "loop_period_p50_ms",
                    "loop_period_p99_ms",
                    "loop_period_max_ms",
                    "loop_ticks",
                    "loop_missed_ticks",
                ):
                    setattr(self.latest, key, float(values.get(key, "nan")))
            elif status.name.startswith("pld/sim/") and "real_time_factor" in values:
                self.latest.real_time_factor = float(values["real_time_factor"])

    def _metrics(self, message: TrainingMetrics) -> None:
        self.latest.trainer_updates = float(message.updates)
        self.latest.trainer_updates_per_s = float(message.updates_per_second)
        self.latest.weights_version = float(message.version)
        self.latest.online_transitions = float(message.online_transitions)

    def snapshot(self, seconds: float) -> TimingSample:
        sample = TimingSample(seconds, *astuple(self.latest)[1:])
        sample.load_average = os.getloadavg()[0]
        return sample


def slope_per_hour(times: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of ``values`` over the second half of the run, per hour."""
    half = times >= times[-1] / 2.0
    if half.sum() < 3:
        return math.nan
    return float(np.polyfit(times[half] / 3600.0, values[half], 1)[0])


def summarize(processes: list[ProcessSample], timing: list[TimingSample]) -> list[str]:
    lines = [
        f"{'process':<20} {'RSS MB start':>12} {'end':>8} {'MB/h (2nd half)':>16} "
        f"{'fds start':>9} {'end':>5} {'max':>5} {'threads':>8}"
    ]
    by_name: dict[str, list[ProcessSample]] = defaultdict(list)
    for sample in processes:
        by_name[sample.name].append(sample)
    for name, samples in sorted(by_name.items()):
        after = [s for s in samples if s.seconds >= WARM_UP_S] or samples
        times = np.array([s.seconds for s in after])
        rss = np.array([s.rss_mb for s in after])
        fds = [s.fds for s in after]
        restarts = len({s.pid for s in samples}) - 1
        note = f"  ({restarts} restart(s))" if restarts else ""
        lines.append(
            f"{name:<20} {rss[0]:>12.0f} {rss[-1]:>8.0f} {slope_per_hour(times, rss):>16.1f} "
            f"{fds[0]:>9} {fds[-1]:>5} {max(fds):>5} {after[-1].threads:>8}{note}"
        )
    heard = [t for t in timing if not math.isnan(t.loop_period_p99_ms) and t.seconds >= WARM_UP_S]
    if heard:
        p99 = np.array([t.loop_period_p99_ms for t in heard])
        ticks = heard[-1].loop_ticks - heard[0].loop_ticks
        missed = heard[-1].loop_missed_ticks - heard[0].loop_missed_ticks
        lines.append(
            f"arm loop after warm-up: p99 of the last minute {np.median(p99):.2f} ms median, "
            f"{p99.max():.2f} ms worst; {missed:.0f} missed of {ticks:.0f} ticks"
        )
    rtf = [t.real_time_factor for t in heard if not math.isnan(t.real_time_factor)]
    if rtf:
        lines.append(f"simulator real-time factor: median {np.median(rtf):.2f}, min {min(rtf):.2f}")
    load = [t.load_average for t in timing]
    lines.append(
        f"machine load average: median {np.median(load):.1f}, max {max(load):.1f} ({os.cpu_count()} cores)"
    )
    trained = [t for t in timing if not math.isnan(t.trainer_updates)]
    if trained:
        last = trained[-1]
        lines.append(
            f"trainer: {last.trainer_updates:.0f} updates, weights version {last.weights_version:.0f}, "
            f"{last.online_transitions:.0f} online transitions"
        )
    return lines


def plot(processes: list[ProcessSample], timing: list[TimingSample], path: Path) -> Path:
    figure, axes = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    by_name: dict[str, list[ProcessSample]] = defaultdict(list)
    for sample in processes:
        by_name[sample.name].append(sample)
    # More processes than the default cycle's 10 colours: one colour each.
    colours = plt.get_cmap("tab20")
    for index, (name, samples) in enumerate(sorted(by_name.items())):
        colour = colours(index % 20)
        minutes = [s.seconds / 60.0 for s in samples]
        axes[0].plot(minutes, [s.rss_mb for s in samples], label=name, color=colour)
        axes[1].plot(minutes, [s.fds for s in samples], label=name, color=colour)
    axes[0].set_ylabel("resident memory (MB)")
    axes[0].legend(fontsize=7, ncol=3)
    axes[1].set_ylabel("open file descriptors")
    minutes = [t.seconds / 60.0 for t in timing]
    axes[2].plot(minutes, [t.loop_period_p50_ms for t in timing], label="arm loop period p50 (last min)")
    axes[2].plot(minutes, [t.loop_period_p99_ms for t in timing], label="arm loop period p99 (last min)")
    axes[2].set_ylabel("ms")
    axes[2].set_xlabel("minutes")
    missed = axes[2].twinx()
    missed.plot(minutes, [t.loop_missed_ticks for t in timing], color="tab:red", label="missed ticks (total)")
    missed.set_ylabel("missed ticks", color="tab:red")
    axes[2].legend(fontsize=7, loc="upper left")
    figure.suptitle("franka_pick_cube simulated graph with the trainer: soak")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_csv(path: Path, rows: list[ProcessSample] | list[TimingSample]) -> None:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([field.name for field in fields(rows[0])])
        writer.writerows(astuple(row) for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser, minutes=60.0, out="out/franka_graph_soak")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--capacity",
        type=int,
        default=5_000,
        help="transitions per replay buffer (about 100 kB each: full after some 50 episodes)",
    )
    parser.add_argument(
        "--no-joint-homing",
        action="store_true",
        help="resets without the arm driver's joint homing (supervisor.home_joints_on_reset), as in run 6",
    )
    args = parser.parse_args()
    out = fresh_directory(args.out)
    profile = write_overlay_profile(
        out,
        default_config_dir() / "franka_pick_cube_sim.yaml",
        {
            "supervisor": {"run_directory": str(out / "runs")}
            | ({"home_joints_on_reset": False} if args.no_joint_homing else {}),
            # Two 128x128 views make a transition about 100 kB, so the profile's million would be
            # 100 GB: a buffer that fills within the first quarter of the hour shows whether
            # memory levels off once it is full.
            "buffer": {"directory": str(out / "episodes"), "capacity": args.capacity},
            "trainer": {"in_graph": True, "directory": str(out / "trainer")},
            "recording": {"enabled": True, "directory": str(out / "bags")},
            "simulation": {"seed": args.seed},
        },
    )
    rclpy.init()
    listener = GraphListener()
    processes: list[ProcessSample] = []
    timing: list[TimingSample] = []
    started = time.monotonic()
    next_sample = 0.0
    with launched_graph(profile, args.minutes, out / "graph.log") as graph:
        try:
            while graph.poll() is None:
                rclpy.spin_once(listener.node, timeout_sec=0.2)
                elapsed = time.monotonic() - started
                if elapsed >= next_sample:
                    processes.extend(sample_processes(graph.pid, elapsed))
                    timing.append(listener.snapshot(elapsed))
                    next_sample += args.every
                    if len(timing) % 30 == 0:
                        print(f"{elapsed / 60.0:6.1f} min  {timing[-1]}", flush=True)
        except KeyboardInterrupt:
            pass
    listener.node.destroy_node()
    rclpy.shutdown()
    write_csv(out / "processes.csv", processes)
    write_csv(out / "timing.csv", timing)
    [run_dir] = (out / "runs").iterdir()
    records = read_episodes(run_dir)
    outcomes = Counter(record.outcome for record in records)
    print(f"graph exited with {graph.returncode} after {(time.monotonic() - started) / 60.0:.1f} min")
    print(f"episodes: {len(records)} ({', '.join(f'{n} {o}' for o, n in sorted(outcomes.items()))})")
    print("\n".join(summarize(processes, timing)))
    print(f"plot: {plot(processes, timing, out / 'soak.png')}\ngraph log: {out / 'graph.log'}")


if __name__ == "__main__":
    main()
