"""Loop statistics from a hand-written stage-episode log whose answers are counted by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pld_ros.core.episode_log import EpisodeRecord
from pld_ros.core.loop_stats import (
    DETECTOR,
    FAULT,
    STEP_LIMIT,
    TIMEOUT,
    format_loop_summary,
    plot_loop,
    summarize_loop,
)

T0 = 1.7e9


def attempt(
    stage: str,
    outcome: str,
    start: float,
    duration: float,
    *,
    cycles: int = 0,
    continued: bool = True,
    recovering: bool = False,
    reason: str = "",
    human_steps: int = 0,
) -> EpisodeRecord:
    return EpisodeRecord(
        episode_id=int(start) + 1,
        mode="base_only",
        probe_steps=0,
        outcome=outcome,
        reason=reason or f"{stage} succeeded",
        steps=int(duration * 20),
        duration_s=duration,
        human_steps=human_steps,
        started_at=T0 + start,
        stage=stage,
        cycles=cycles,
        continued=continued,
        recovering=recovering,
    )


LOG = [
    # Cycle 1: clean, 0-40 s.
    attempt("insert", "success", 0, 10, continued=False),
    attempt("move", "success", 10, 10),
    attempt("press", "success", 20, 5),
    attempt("return", "success", 25, 15, cycles=1),
    # Cycle 2: the part is dropped during move, recovered, then the cycle completes at 150 s.
    attempt("insert", "success", 40, 10, cycles=1),
    attempt("move", "failure", 50, 4, cycles=1, reason="move failed: part dropped"),
    attempt("recover", "success", 54, 16, cycles=1, recovering=True),
    attempt("insert", "success", 70, 20, cycles=1),
    attempt("move", "success", 90, 20, cycles=1),
    attempt("press", "failure", 110, 20, cycles=1, reason="press timed out after 20.0 s"),
    attempt("recover", "success", 130, 5, cycles=1, recovering=True),
    attempt("insert", "success", 135, 5, cycles=1),
    attempt("move", "success", 140, 5, cycles=1),
    attempt("press", "success", 145, 2, cycles=1),
    attempt("return", "success", 147, 3, cycles=2),
    # A recovery that fails (abort), then a full reset at 200 s: a human's help.
    attempt("insert", "failure", 150, 30, cycles=2, reason="insert failed: step limit (600 steps)"),
    attempt(
        "recover", "failure", 180, 20, cycles=2, recovering=True, reason="recover timed out after 20.0 s"
    ),
    attempt("insert", "success", 200, 10, continued=False),
    attempt("move", "aborted", 210, 1, reason="arm error"),
    attempt("insert", "success", 215, 5, continued=False),
]


def test_cycles_stages_recoveries_and_causes_are_counted() -> None:
    summary = summarize_loop(LOG)
    assert summary.attempts == 20 and summary.cycles == 2
    assert summary.cycle_times_s == (40.0, 110.0)
    assert summary.mean_cycle_s == 75.0
    insert = summary.stages["insert"]
    assert (insert.attempts, insert.successes, insert.failures, insert.aborted) == (7, 6, 1, 0)
    assert insert.success_rate == pytest.approx(6 / 7)
    assert insert.mean_duration_s == pytest.approx((10 + 10 + 20 + 5 + 10 + 5) / 6)
    move = summary.stages["move"]
    assert (move.attempts, move.successes, move.failures, move.aborted) == (5, 3, 1, 1)
    assert move.success_rate == pytest.approx(3 / 4), "an aborted attempt is neither"
    assert list(summary.stages) == ["insert", "move", "press", "return", "recover"]
    assert (summary.recoveries, summary.recovered) == (3, 2)
    assert summary.causes == {TIMEOUT: 2, DETECTOR: 1, STEP_LIMIT: 1, FAULT: 1}


def test_human_help_is_a_teleop_episode_or_a_full_reset_in_the_middle_of_the_loop() -> None:
    summary = summarize_loop(LOG)
    # Full resets at 200 s and 215 s; the run's first episode is not one.
    assert summary.interventions == 2
    assert summary.operating_s == 220.0
    assert summary.longest_unattended_s == 200.0
    helped = [*LOG[:3], attempt("press", "success", 25, 5, human_steps=4)]
    assert summarize_loop(helped).interventions == 1
    assert summarize_loop(helped).longest_unattended_s == 25.0


def test_an_empty_log_and_a_task_scope_log() -> None:
    empty = summarize_loop([])
    assert empty.attempts == 0 and empty.cycles == 0 and math.isnan(empty.mean_cycle_s)
    # Task scope: every episode has its own reset; none of them is human help.
    tasks = [
        attempt("lift", o, 10 * i, 5, continued=False, cycles=int(o == "success"))
        for i, o in enumerate(["success", "failure", "success"])
    ]
    summary = summarize_loop(tasks)
    assert summary.cycles == 2 and summary.interventions == 0


def test_the_summary_table_and_the_plot(tmp_path: Path) -> None:
    text = format_loop_summary(summarize_loop(LOG))
    lines = {
        line.rsplit("  ", 1)[0].strip(): line.rsplit("  ", 1)[1].strip() for line in text.splitlines()[:11]
    }
    assert lines["cycles completed"] == "2" and lines["recoveries (succeeded)"] == "3 (2)"
    assert lines["human interventions"] == "2" and lines["longest unattended"] == "3.3 min"
    row = next(line for line in text.splitlines() if line.startswith("insert "))
    assert row.split() == ["insert", "7", "6", "1", "0", "85.7", "%", "10.0"]
    path = plot_loop(LOG, tmp_path / "loop.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
