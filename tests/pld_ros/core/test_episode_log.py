"""The run's episode log: durable lines, a torn last line, the summary numbers and the plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pld_ros.core.episode_log import (
    EpisodeLog,
    EpisodeRecord,
    format_summary,
    last_episode_id,
    plot_outcomes,
    read_episodes,
    summarize,
    summarize_run,
)


def record(episode_id: int, outcome: str, steps: int = 100, duration: float = 5.0) -> EpisodeRecord:
    return EpisodeRecord(
        episode_id=episode_id,
        mode="probe_takeover",
        probe_steps=7,
        outcome=outcome,
        reason=outcome,
        steps=steps,
        duration_s=duration,
        started_at=1.7e9 + episode_id,
    )


RECORDS = [
    record(1, "success", steps=40, duration=2.0),
    record(2, "failure", steps=200, duration=10.0),
    record(3, "aborted", steps=12, duration=0.6),
    record(4, "success", steps=60, duration=3.0),
]


def test_appended_records_read_back_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    log = EpisodeLog(tmp_path / "run")
    for r in RECORDS:
        log.append(r)
    assert log.read() == RECORDS
    lines = log.path.read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["outcome"] == "success"
    # A kill in the middle of a write leaves half a line at the end.
    with log.path.open("a") as file:
        file.write('{"episode_id": 5, "mode": "probe_')
    assert read_episodes(tmp_path / "run") == RECORDS
    # Reopened, the log drops the torn line and appends on a line of its own.
    reopened = EpisodeLog(tmp_path / "run")
    reopened.append(record(5, "failure"))
    assert reopened.read() == [*RECORDS, record(5, "failure")]
    # Anywhere but at the end, an unreadable line is damage, not a kill.
    log.path.write_text("\n".join(lines[:2]) + "\nnot json\n" + "\n".join(lines[2:]) + "\n")
    with pytest.raises(ValueError, match=r"episodes.jsonl:3: not a JSON object"):
        read_episodes(log.path)


def test_unknown_keys_are_ignored_and_bad_outcomes_refused(tmp_path: Path) -> None:
    path = tmp_path / "episodes.jsonl"
    data = {**json.loads(json.dumps(RECORDS[0].__dict__)), "from_a_newer_writer": 1}
    path.write_text(json.dumps(data) + "\n")
    assert read_episodes(path) == [RECORDS[0]]
    with pytest.raises(ValueError, match="outcome must be one of"):
        record(1, "won")


def test_summary_counts_and_rates_exclude_aborted_episodes() -> None:
    summary = summarize(RECORDS)
    assert (summary.episodes, summary.successes, summary.failures, summary.aborted) == (4, 2, 1, 1)
    assert summary.success_rate == pytest.approx(2 / 3)
    assert summary.mean_steps == pytest.approx(100.0)
    assert summary.mean_duration_s == pytest.approx(5.0)
    table = format_summary(summary)
    assert "success rate (excl. aborted)" in table and "66.7 %" in table
    assert "mean length (excl. aborted)" in table and "100.0 steps" in table
    empty = summarize([record(1, "aborted")])
    assert math.isnan(empty.success_rate) and empty.aborted == 1
    assert "n/a" in format_summary(empty)


def test_the_outcome_plot_is_a_png(tmp_path: Path) -> None:
    records = [record(i, ("success", "failure", "aborted")[i % 3]) for i in range(1, 40)]
    path = plot_outcomes(records, tmp_path / "plots" / "outcomes.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    plot_outcomes([], tmp_path / "empty.png")
    assert (tmp_path / "empty.png").is_file()


def test_summarize_run_prints_the_table_and_writes_the_plot(tmp_path: Path) -> None:
    log = EpisodeLog(tmp_path)
    for r in RECORDS:
        log.append(r)
    table = summarize_run(tmp_path, plot=tmp_path / "out.png")
    assert table == format_summary(summarize(RECORDS)) and (tmp_path / "out.png").is_file()


def test_the_last_episode_id_of_earlier_runs_of_a_profile(tmp_path: Path) -> None:
    assert last_episode_id(tmp_path, "pick") == 0
    EpisodeLog(tmp_path / "pick-20260101T000000Z").append(record(7, "success"))
    EpisodeLog(tmp_path / "pick-20260102T000000Z").append(record(3, "failure"))
    EpisodeLog(tmp_path / "pick_sim-20260102T000000Z").append(record(99, "failure"))
    damaged = EpisodeLog(tmp_path / "pick-20260103T000000Z")
    damaged.path.write_text("garbage\n" + json.dumps(RECORDS[0].__dict__) + "\n")
    assert last_episode_id(tmp_path, "pick") == 7
