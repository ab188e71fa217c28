"""The trainer's metrics log: records written as the trainer writes them, read back, plotted."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import pytest

from pld_ros.core.json_lines import JsonLines
from pld_ros.core.training_log import (
    METRICS_FILE,
    TrainingRecord,
    format_training,
    plot_training,
    read_training_log,
)


def training_record(second: int, **changes: float | int | str) -> TrainingRecord:
    """A plausible record ``second`` s into training: losses falling, buffers growing."""
    values: dict[str, float | int | str] = {
        "time": 1.7e9 + second,
        "updates": 10 * second,
        "version": second // 5,
        "updates_per_second": 10.0,
        "critic_loss": 2.0 / (1 + second),
        "actor_loss": -0.1 * second,
        "q_mean": 0.05 * second,
        "temperature": 0.1 * 0.99**second,
        "xi": min(1.0, 0.02 * second),
        "offline_transitions": 500,
        "online_transitions": 20 * second,
        "episodes": 10 + second // 3,
        "phase": "online",
        "trainer_id": "gpu-box",
        **changes,
    }
    return TrainingRecord(**values)  # type: ignore[arg-type]


def write_log(directory: Path, seconds: int) -> list[TrainingRecord]:
    """A metrics log as the trainer writes it; the first record is from before any update."""
    records = [
        training_record(0, critic_loss=math.nan, actor_loss=math.nan, q_mean=math.nan, phase="warm-up")
    ]
    records += [training_record(second) for second in range(1, seconds)]
    log = JsonLines(directory / METRICS_FILE)
    for record in records:
        log.append(asdict(record))
    return records


def test_records_round_trip_with_nan_and_unknown_keys(tmp_path: Path) -> None:
    written = write_log(tmp_path, 30)
    with (tmp_path / METRICS_FILE).open("a") as file:
        file.write('{"time": 1700000100.0, "updates": 400, "a_newer_field": 1}\n')
    read = read_training_log(tmp_path)
    assert len(read) == 31 and read[1:30] == written[1:30]
    assert math.isnan(read[0].critic_loss) and read[0].phase == "warm-up"
    assert read[-1].updates == 400 and math.isnan(read[-1].q_mean)
    assert "400 updates" in format_training(read)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"updates": 3}', "no 'time'"),
        ('{"time": 1.0, "updates": "many"}', "updates: 'many' is not a number"),
    ],
)
def test_a_bad_record_is_named(tmp_path: Path, line: str, problem: str) -> None:
    write_log(tmp_path, 3)
    with (tmp_path / METRICS_FILE).open("a") as file:
        file.write(line + "\n")
    with pytest.raises(ValueError, match=rf"metrics.jsonl:4: not a training record: .*{problem}"):
        read_training_log(tmp_path / METRICS_FILE)


def test_plot_training_writes_a_png(tmp_path: Path) -> None:
    plot = plot_training(write_log(tmp_path, 60), tmp_path / "out" / "training.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 20_000
    with pytest.raises(ValueError, match="no training records"):
        plot_training([], tmp_path / "empty.png")
