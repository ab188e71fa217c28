"""A run's episode log: one JSON line per ended episode, its summary table and its outcome plot.

The log is append-only and each line is flushed and fsync'd as the episode ends, so a run that is
killed loses no episode that had already ended; a line torn by the kill is skipped on reading.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pld_ros.core.json_lines import JsonLines, read_records

EPISODES_FILE = "episodes.jsonl"
"""Name of the episode log in a run directory."""
SUMMARY_FILE = "summary.txt"
PLOT_FILE = "outcomes.png"

SUCCESS = "success"
FAILURE = "failure"
ABORTED = "aborted"
OUTCOMES = (SUCCESS, FAILURE, ABORTED)


@dataclass(frozen=True)
class EpisodeRecord:
    """One ended episode, as the log stores it."""

    episode_id: int
    mode: str
    """"base_only", "probe_takeover" or "residual_only"."""
    probe_steps: int
    """k: base-policy steps before the residual took over."""
    outcome: str
    """"success", "failure" or "aborted"."""
    reason: str
    steps: int
    """Control ticks the episode ran (0 when it was aborted during its reset)."""
    duration_s: float
    """Seconds from the start (after the reset) to the end."""
    human_steps: int = 0
    """Ticks a human commanded."""
    started_at: float = 0.0
    """Wall-clock (Unix) time of the start, s."""
    stage: str = ""
    """Stage the episode ended in."""
    cycles: int = 0
    """Completed cycles of the task since the stage machine last started over."""
    continued: bool = False
    """Started where the previous episode ended, without a reset (an episode per stage)."""
    recovering: bool = False
    """Its stage was a recovery: entered through a failure edge."""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")

    @staticmethod
    def from_json(data: dict[str, Any]) -> EpisodeRecord:
        """A record from its JSON object; unknown keys (a newer writer) are ignored."""
        known = {f.name for f in fields(EpisodeRecord)}
        return EpisodeRecord(**{k: v for k, v in data.items() if k in known})


class EpisodeLog:
    """Appends records to ``<run_dir>/episodes.jsonl``, creating the directory.

    Opening an existing log drops a torn last line (a killed writer's), so appended records start
    on a line of their own.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / EPISODES_FILE
        self._lines = JsonLines(self.path)

    def append(self, record: EpisodeRecord) -> None:
        self._lines.append(asdict(record))

    def read(self) -> list[EpisodeRecord]:
        """The records so far; none before the first episode has ended."""
        return read_episodes(self.path) if self.path.is_file() else []


def read_episodes(path: Path) -> list[EpisodeRecord]:
    """The records of an episode log (a file, or a run directory holding one).

    A line that does not parse is skipped only when it is the last one (a write torn by a kill);
    anywhere else it means the file is damaged, and a ValueError names the line.
    """
    if path.is_dir():
        path = path / EPISODES_FILE
    return read_records(path, EpisodeRecord.from_json, "an episode record")


def run_directory_name(profile_name: str, stamp: str) -> str:
    """``<profile name>-<UTC timestamp>``: where one run of a profile keeps its log."""
    return f"{profile_name}-{stamp}"


def last_episode_id(root: Path, profile_name: str) -> int:
    """The highest episode id logged by earlier runs of a profile under ``root`` (0 if none).

    A restarted supervisor continues after it, so episode ids stay unique across runs of a robot
    (the replay buffer and the recordings key episodes by id). Unreadable logs are skipped.
    """
    last = 0
    for log in root.glob(run_directory_name(profile_name, "*") + "/" + EPISODES_FILE):
        try:
            last = max([last, *(r.episode_id for r in read_episodes(log))])
        except (OSError, ValueError):
            continue
    return last


@dataclass(frozen=True)
class Summary:
    episodes: int
    """Ended episodes, aborted ones included."""
    successes: int
    failures: int
    aborted: int
    success_rate: float
    """Successes over non-aborted episodes (an abort is neither success nor failure); NaN if none."""
    mean_steps: float
    """Mean length of the non-aborted episodes, ticks; NaN if none."""
    mean_duration_s: float
    """Mean duration of the non-aborted episodes, s; NaN if none."""


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarize(records: Iterable[EpisodeRecord]) -> Summary:
    records = list(records)
    counted = [r for r in records if r.outcome != ABORTED]
    successes = sum(r.outcome == SUCCESS for r in counted)
    return Summary(
        episodes=len(records),
        successes=successes,
        failures=len(counted) - successes,
        aborted=len(records) - len(counted),
        success_rate=successes / len(counted) if counted else math.nan,
        mean_steps=_mean([r.steps for r in counted]),
        mean_duration_s=_mean([r.duration_s for r in counted]),
    )


def format_summary(summary: Summary) -> str:
    """A plain-text table of the summary."""

    def number(value: float, fmt: str) -> str:
        return "n/a" if math.isnan(value) else format(value, fmt)

    rows = [
        ("episodes", str(summary.episodes)),
        ("successes", str(summary.successes)),
        ("failures", str(summary.failures)),
        ("aborted", str(summary.aborted)),
        ("success rate (excl. aborted)", number(100.0 * summary.success_rate, ".1f") + " %"),
        ("mean length (excl. aborted)", number(summary.mean_steps, ".1f") + " steps"),
        ("mean duration (excl. aborted)", number(summary.mean_duration_s, ".2f") + " s"),
    ]
    width = max(len(name) for name, _ in rows)
    values = max(len(value) for _, value in rows)
    rule = "-" * (width + values + 3)
    return "\n".join([rule, *(f"{name:<{width}}   {value:>{values}}" for name, value in rows), rule])


def plot_outcomes(records: Sequence[EpisodeRecord], path: Path, window: int = 10) -> Path:
    """Write a PNG: each episode's outcome over time, and the rolling success rate over the last
    ``window`` non-aborted episodes."""
    import matplotlib

    matplotlib.use("Agg")  # no display: runs write their plot from a headless process
    import matplotlib.pyplot as plt

    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True, height_ratios=(1, 2))
    try:
        ids = [r.episode_id for r in records]
        rows = {SUCCESS: 2, FAILURE: 1, ABORTED: 0}
        colours = {SUCCESS: "tab:green", FAILURE: "tab:red", ABORTED: "tab:gray"}
        for outcome in OUTCOMES:
            chosen = [r for r in records if r.outcome == outcome]
            top.scatter(
                [r.episode_id for r in chosen],
                [rows[outcome]] * len(chosen),
                c=colours[outcome],
                marker="s",
                label=f"{outcome} ({len(chosen)})",
            )
        top.set_yticks(list(rows.values()), list(rows.keys()))
        top.set_ylim(-0.5, 3.4)  # an empty band on top keeps the legend off the success row
        top.set_title(f"Episode outcomes ({len(records)} episodes)")
        top.legend(loc="upper left", fontsize="small", ncols=3)

        rate_x: list[int] = []
        rate_y: list[float] = []
        recent: deque[bool] = deque(maxlen=window)
        for record in records:
            if record.outcome == ABORTED:
                continue
            recent.append(record.outcome == SUCCESS)
            rate_x.append(record.episode_id)
            rate_y.append(100.0 * sum(recent) / len(recent))
        bottom.plot(rate_x, rate_y, color="tab:blue", marker=".")
        bottom.set_ylim(-5, 105)
        bottom.set_ylabel(f"success rate, last {window} (%)")
        bottom.set_xlabel("episode")
        bottom.grid(alpha=0.3)
        if ids:
            bottom.set_xlim(min(ids) - 0.5, max(ids) + 0.5)
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
    return path


def summarize_run(run_dir: Path, plot: Path | None = None) -> str:
    """The summary table of a run directory's episode log (``pld runs summary``); with ``plot``,
    also write the outcome plot there."""
    records = read_episodes(run_dir)
    if plot is not None:
        plot_outcomes(records, plot)
    return format_summary(summarize(records))
