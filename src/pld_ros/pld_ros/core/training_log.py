"""The trainer's metrics log: one JSON line per metrics period in ``<trainer.directory>/metrics.jsonl``,
and its training curves as a PNG (``pld report``).

The trainer appends through :class:`~pld_ros.core.json_lines.JsonLines` (each line fsync'd; a
restarted trainer appends to the same file, its ``updates`` carrying on from the checkpoint), so
the curves of a run that was killed and resumed are one log.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pld_ros.core.json_lines import read_records

METRICS_FILE = "metrics.jsonl"
"""Name of the metrics log in the trainer's directory."""
TRAINING_PLOT_FILE = "training.png"


@dataclass(frozen=True)
class TrainingRecord:
    """The trainer's state at one metrics period (the fields of ``trainer/metrics``)."""

    time: float
    """Wall-clock (Unix) time, s."""
    updates: int
    """Gradient steps of the critic so far (Cal-QL pretraining included)."""
    version: int = 0
    """Newest published weights version."""
    updates_per_second: float = math.nan
    critic_loss: float = math.nan
    """Of the last update chunk; NaN before the first update."""
    actor_loss: float = math.nan
    q_mean: float = math.nan
    temperature: float = math.nan
    """SAC's entropy temperature alpha."""
    xi: float = math.nan
    """The residual's scale at this many updates (the profile's xi schedule)."""
    offline_transitions: int = 0
    online_transitions: int = 0
    episodes: int = 0
    phase: str = ""
    """"warm-up", "pretraining" or "online"."""
    trainer_id: str = ""

    @staticmethod
    def from_json(data: dict[str, Any]) -> TrainingRecord:
        """A record from its JSON object: null (a NaN when written) reads as NaN, unknown keys (a
        newer writer) are ignored; a missing ``time`` or ``updates`` raises KeyError, a value of
        the wrong kind TypeError."""
        known = {f.name: f for f in fields(TrainingRecord)}
        values: dict[str, Any] = {
            key: (math.nan if value is None else value) for key, value in data.items() if key in known
        }
        for key in ("time", "updates"):
            if key not in values:
                raise KeyError(f"no {key!r}")
        for key, value in values.items():
            number = known[key].type in ("int", "float")
            if number != (isinstance(value, (int, float)) and not isinstance(value, bool)):
                raise TypeError(f"{key}: {value!r} is not a{' number' if number else ' string'}")
        return TrainingRecord(**values)


def read_training_log(path: Path) -> list[TrainingRecord]:
    """The records of a metrics log (a file, or the trainer directory holding one); a ValueError
    names the file and line of a damaged one."""
    if path.is_dir():
        path = path / METRICS_FILE
    return read_records(path, TrainingRecord.from_json, "a training record")


def plot_training(records: Sequence[TrainingRecord], path: Path) -> Path:
    """Write a PNG of the training curves: critic and actor loss, mean Q, temperature and xi
    against updates; updates/s and the buffer sizes against time since the first record."""
    import matplotlib

    matplotlib.use("Agg")  # no display: reports are written on headless machines too
    import matplotlib.pyplot as plt

    if not records:
        raise ValueError("no training records to plot")
    updates = [float(r.updates) for r in records]
    start = records[0].time
    minutes = [(r.time - start) / 60.0 for r in records]
    figure, axes = plt.subplots(3, 2, figsize=(11, 9))
    try:
        panels: list[tuple[Any, list[float], list[tuple[str, list[float]]], str, str]] = [
            (axes[0, 0], updates, [("critic loss", [r.critic_loss for r in records])], "updates", "loss"),
            (axes[0, 1], updates, [("actor loss", [r.actor_loss for r in records])], "updates", "loss"),
            (axes[1, 0], updates, [("mean Q", [r.q_mean for r in records])], "updates", "Q"),
            (
                axes[1, 1],
                updates,
                [("temperature", [r.temperature for r in records]), ("xi", [r.xi for r in records])],
                "updates",
                "value",
            ),
            (
                axes[2, 0],
                minutes,
                [("updates/s", [r.updates_per_second for r in records])],
                "minutes",
                "updates/s",
            ),
            (
                axes[2, 1],
                minutes,
                [
                    ("offline transitions", [float(r.offline_transitions) for r in records]),
                    ("online transitions", [float(r.online_transitions) for r in records]),
                ],
                "minutes",
                "transitions",
            ),
        ]
        for axis, x, series, xlabel, ylabel in panels:
            for label, y in series:
                axis.plot(x, y, label=label, marker="." if len(records) < 50 else None)
            axis.set_xlabel(xlabel)
            axis.set_ylabel(ylabel)
            axis.grid(alpha=0.3)
            axis.legend(loc="best", fontsize="small")
        last = records[-1]
        figure.suptitle(
            f"Training: {last.updates} updates, weights version {last.version}, {last.episodes} episodes"
            + (f" ({last.trainer_id})" if last.trainer_id else "")
        )
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)
    return path


def format_training(records: Sequence[TrainingRecord]) -> str:
    """A few lines on where training stands (``pld report``)."""
    if not records:
        return "training: no records"
    last = records[-1]
    hours = (last.time - records[0].time) / 3600.0

    def number(value: float) -> str:
        return "n/a" if math.isnan(value) else f"{value:.4g}"

    return (
        f"training: {last.updates} updates over {hours:.2f} h, weights version {last.version}, "
        f"{last.episodes} episodes ({last.offline_transitions} offline, {last.online_transitions} online "
        f"transitions); last critic loss {number(last.critic_loss)}, actor loss {number(last.actor_loss)}, "
        f"mean Q {number(last.q_mean)}, temperature {number(last.temperature)}"
    )
