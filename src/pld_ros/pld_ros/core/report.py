"""``pld report``: the PNG plots and summaries of a run's logs.

A directory may be a supervisor run directory (``episodes.jsonl``: the outcome plot and summary
of :mod:`pld_ros.core.episode_log`), a trainer directory (``metrics.jsonl``: the training curves
of :mod:`pld_ros.core.training_log`), or hold both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pld_ros.core.episode_log import (
    EPISODES_FILE,
    PLOT_FILE,
    format_summary,
    plot_outcomes,
    read_episodes,
    summarize,
)
from pld_ros.core.training_log import (
    METRICS_FILE,
    TRAINING_PLOT_FILE,
    format_training,
    plot_training,
    read_training_log,
)


class ReportError(ValueError):
    """A directory holds no log, or a log is damaged; the message names the file."""


def write_report(directories: Sequence[Path], output: Path | None = None) -> list[str]:
    """Plot and summarize every log found in ``directories``; return the lines to print.

    The plots go next to each log, or into ``output`` (named ``<directory name>-outcomes.png``
    and ``<directory name>-training.png`` when several directories share it).
    """
    lines: list[str] = []
    for directory in directories:
        episodes, metrics = directory / EPISODES_FILE, directory / METRICS_FILE
        if not episodes.is_file() and not metrics.is_file():
            raise ReportError(f"{directory}: neither {EPISODES_FILE} (a run) nor {METRICS_FILE} (a trainer)")
        prefix = f"{directory.resolve().name}-" if output is not None and len(directories) > 1 else ""
        target = output if output is not None else directory
        lines.append(f"{directory}:")
        try:
            if episodes.is_file():
                records = read_episodes(episodes)
                plot = plot_outcomes(records, target / f"{prefix}{PLOT_FILE}")
                lines += [format_summary(summarize(records)), f"outcome plot: {plot}"]
            if metrics.is_file():
                training = read_training_log(metrics)
                if training:
                    plot = plot_training(training, target / f"{prefix}{TRAINING_PLOT_FILE}")
                    lines += [format_training(training), f"training plot: {plot}"]
                else:
                    lines.append(f"{metrics}: no record yet: no training plot")
        except ValueError as exc:
            raise ReportError(str(exc)) from None
    return lines
