"""Statistics of a long-horizon loop (the YAM's GPU insertion), from its episode log.

With ``supervisor.episode_scope: stage`` every stage attempt is one logged episode
(:class:`~pld_ros.core.episode_log.EpisodeRecord`), so the log alone tells how the loop went:
cycles completed, each stage's attempts, successes and durations, the recoveries, why stages
failed, and how long the loop ran without a human. What counts as human help: an episode in which
a human commanded the arm (teleop), and a full reset in the middle of a stage-episode log (a
terminal "abort" or a fault: on the real rig someone has to put the scene back).

Pure: :func:`summarize_loop` over records, :func:`format_loop_summary` for ``pld runs loop``,
:func:`plot_loop` for its PNG. The supervisor publishes the same summary as it goes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pld_ros.core.episode_log import ABORTED, FAILURE, SUCCESS, EpisodeRecord

TIMEOUT = "timeout"
DETECTOR = "failure detector"
STEP_LIMIT = "step limit"
FAULT = "fault"
CAUSES = (TIMEOUT, DETECTOR, STEP_LIMIT, FAULT)
"""Why a stage attempt did not succeed, in the order the summary lists them."""


def failure_cause(record: EpisodeRecord) -> str:
    """The cause class of a failed or aborted attempt, from the reason the supervisor logged."""
    if record.outcome == ABORTED:
        return FAULT
    if "step limit" in record.reason:
        return STEP_LIMIT
    if "timed out" in record.reason:
        return TIMEOUT
    return DETECTOR


@dataclass
class StageStats:
    """One stage's attempts."""

    attempts: int = 0
    successes: int = 0
    failures: int = 0
    aborted: int = 0
    durations_s: list[float] = field(default_factory=list)
    """Durations of the successful attempts, s."""

    @property
    def success_rate(self) -> float:
        """Successes over attempts that were not aborted; NaN if none."""
        counted = self.successes + self.failures
        return self.successes / counted if counted else math.nan

    @property
    def mean_duration_s(self) -> float:
        return sum(self.durations_s) / len(self.durations_s) if self.durations_s else math.nan


@dataclass(frozen=True)
class LoopSummary:
    attempts: int
    """Logged episodes: stage attempts."""
    cycles: int
    """Completed cycles of the whole task."""
    cycle_times_s: tuple[float, ...]
    """Wall time of each completed cycle, from its first stage's start to its last stage's end."""
    stages: dict[str, StageStats]
    """By stage name, in the order the stages first appear."""
    recoveries: int
    """Attempts at a stage entered through a failure edge."""
    recovered: int
    """Recoveries that succeeded."""
    causes: dict[str, int]
    """Unsuccessful attempts by cause (:data:`CAUSES`)."""
    interventions: int
    """Times a human had to help (see the module docstring)."""
    operating_s: float
    """From the first attempt's start to the last one's end, s."""
    longest_unattended_s: float
    """Longest stretch of operating time without human help, s."""

    @property
    def mean_cycle_s(self) -> float:
        return sum(self.cycle_times_s) / len(self.cycle_times_s) if self.cycle_times_s else math.nan


def cycles_completed(records: Sequence[EpisodeRecord]) -> list[int]:
    """The cycles each record completed. A record's ``cycles`` counts from the last time the stage
    machine started over, which is the last record that was not ``continued``."""
    completed = []
    previous = 0
    for record in records:
        if not record.continued:
            previous = 0
        completed.append(max(record.cycles - previous, 0))
        previous = record.cycles
    return completed


def _needs_human(record: EpisodeRecord, index: int, stage_log: bool) -> bool:
    return record.human_steps > 0 or (stage_log and index > 0 and not record.continued)


def summarize_loop(records: Sequence[EpisodeRecord]) -> LoopSummary:
    """The loop's summary; records in the order they ended (the log's order)."""
    stage_log = any(r.continued for r in records)
    stages: dict[str, StageStats] = {}
    causes = dict.fromkeys(CAUSES, 0)
    cycle_times: list[float] = []
    cycle_start: float | None = None
    recoveries = recovered = interventions = 0
    help_times: list[float] = []
    completed_by = cycles_completed(records)
    for index, (record, completed) in enumerate(zip(records, completed_by, strict=True)):
        end = record.started_at + record.duration_s
        if _needs_human(record, index, stage_log):
            interventions += 1
            help_times.append(record.started_at)
        if not record.continued or cycle_start is None:
            # The stage machine started over: so does the cycle.
            cycle_start = record.started_at
        stats = stages.setdefault(record.stage or "?", StageStats())
        stats.attempts += 1
        if record.outcome == SUCCESS:
            stats.successes += 1
            stats.durations_s.append(record.duration_s)
        elif record.outcome == FAILURE:
            stats.failures += 1
        else:
            stats.aborted += 1
        if record.outcome != SUCCESS:
            causes[failure_cause(record)] += 1
        if record.recovering:
            recoveries += 1
            recovered += record.outcome == SUCCESS
        if completed:
            cycle_times.append(end - cycle_start)
            cycle_start = end
    if records:
        first = records[0].started_at
        last = max(r.started_at + r.duration_s for r in records)
        marks = [first, *help_times, last]
        longest = max(b - a for a, b in itertools.pairwise(marks))
        operating = last - first
    else:
        operating = longest = 0.0
    return LoopSummary(
        attempts=len(records),
        cycles=sum(completed_by),
        cycle_times_s=tuple(cycle_times),
        stages=stages,
        recoveries=recoveries,
        recovered=recovered,
        causes=causes,
        interventions=interventions,
        operating_s=operating,
        longest_unattended_s=longest,
    )


def _number(value: float, fmt: str) -> str:
    return "n/a" if math.isnan(value) else format(value, fmt)


def format_loop_summary(summary: LoopSummary) -> str:
    """Plain-text tables: the loop as a whole, then one row per stage."""
    rows = [
        ("operating time", f"{summary.operating_s / 60.0:.1f} min"),
        ("cycles completed", str(summary.cycles)),
        ("mean cycle time", _number(summary.mean_cycle_s, ".1f") + " s"),
        ("stage attempts", str(summary.attempts)),
        ("recoveries (succeeded)", f"{summary.recoveries} ({summary.recovered})"),
        *((f"failed: {cause}", str(count)) for cause, count in summary.causes.items()),
        ("human interventions", str(summary.interventions)),
        ("longest unattended", f"{summary.longest_unattended_s / 60.0:.1f} min"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}   {value}" for name, value in rows]
    header = (
        f"{'stage':<16} {'attempts':>8} {'success':>8} {'failed':>7} {'aborted':>8} {'rate':>7} {'mean s':>7}"
    )
    lines += ["", header, "-" * len(header)]
    for name, stats in summary.stages.items():
        rate = _number(100.0 * stats.success_rate, ".1f") + " %"
        lines.append(
            f"{name:<16} {stats.attempts:>8} {stats.successes:>8} {stats.failures:>7} {stats.aborted:>8} "
            f"{rate:>7} {_number(stats.mean_duration_s, '.1f'):>7}"
        )
    return "\n".join(lines)


def plot_loop(records: Sequence[EpisodeRecord], path: Path) -> Path:
    """Write a PNG: every stage attempt on a timeline (one row per stage, coloured by outcome,
    recoveries hatched), and the cycles completed over operating time."""
    import matplotlib

    matplotlib.use("Agg")  # no display: runs write their plot from a headless process
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    summary = summarize_loop(records)
    names = list(summary.stages)
    colours = {SUCCESS: "tab:green", FAILURE: "tab:red", ABORTED: "tab:gray"}
    first = records[0].started_at if records else 0.0
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True, height_ratios=(2, 1))
    try:
        for record in records:
            row = names.index(record.stage or "?")
            start = (record.started_at - first) / 60.0
            top.broken_barh(
                [(start, max(record.duration_s / 60.0, 1e-3))],
                (row - 0.4, 0.8),
                facecolors=colours[record.outcome],
                hatch="//" if record.recovering else None,
                edgecolor="black" if record.recovering else "none",
                linewidth=0.3,
            )
        top.set_yticks(range(len(names)), names)
        top.set_ylim(-0.6, len(names) + 0.2)  # an empty band on top keeps the legend off the rows
        top.set_title(
            f"Loop: {summary.cycles} cycles in {summary.operating_s / 60.0:.1f} min, "
            f"{summary.recoveries} recoveries ({summary.recovered} succeeded), "
            f"{summary.interventions} interventions"
        )
        handles = [Rectangle((0, 0), 1, 1, color=c, label=outcome) for outcome, c in colours.items()]
        handles.append(
            Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch="//", label="recovery")
        )
        top.legend(
            handles=handles,
            loc="upper right",
            fontsize="small",
            ncols=4,
        )
        times = [0.0]
        counts = [0]
        for record, done in zip(records, cycles_completed(records), strict=True):
            if done:
                times.append((record.started_at + record.duration_s - first) / 60.0)
                counts.append(counts[-1] + done)
        bottom.step(times, counts, where="post", color="tab:blue")
        bottom.set_ylabel("cycles completed")
        bottom.set_xlabel("operating time (min)")
        bottom.grid(alpha=0.3)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
    return path
