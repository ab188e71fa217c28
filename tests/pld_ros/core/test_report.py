"""`pld report` on real logs: a supervisor's episodes.jsonl and a trainer's metrics.jsonl, written
by the same classes the nodes use, turned into PNG plots and summaries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pld_ros.core.episode_log import EpisodeLog, EpisodeRecord
from pld_ros.core.report import ReportError, write_report
from tests.pld_ros.core.test_training_log import write_log

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(directory: Path, outcomes: str) -> None:
    """A run directory whose log holds one episode per letter: s(uccess), f(ailure), a(borted)."""
    log = EpisodeLog(directory)
    names = {"s": "success", "f": "failure", "a": "aborted"}
    for number, letter in enumerate(outcomes, start=1):
        outcome = names[letter]
        log.append(
            EpisodeRecord(number, "probe_takeover", 5, outcome, outcome, 100, 5.0, started_at=1.7e9 + number)
        )


def test_pld_report_plots_a_run_and_a_trainer(tmp_path: Path) -> None:
    run, trainer = tmp_path / "run", tmp_path / "trainer"
    write_run(run, "ssfafs")
    write_log(trainer, 40)
    result = subprocess.run(
        [sys.executable, "-m", "pld_ros.cli", "report", str(run), str(trainer)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (run / "outcomes.png").read_bytes()[:8] == PNG
    assert (trainer / "training.png").read_bytes()[:8] == PNG
    assert "success rate (excl. aborted)" in result.stdout and "60.0 %" in result.stdout  # 3 of 5
    assert "390 updates" in result.stdout and f"training plot: {trainer / 'training.png'}" in result.stdout


def test_one_output_directory_keeps_the_plots_apart(tmp_path: Path) -> None:
    write_run(tmp_path / "run_a", "sf")
    write_run(tmp_path / "run_b", "ff")
    write_log(tmp_path / "run_b", 5)  # a trainer that kept its log with the run
    write_report([tmp_path / "run_a", tmp_path / "run_b"], tmp_path / "plots")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "run_a-outcomes.png",
        "run_b-outcomes.png",
        "run_b-training.png",
    ]


def test_a_directory_without_logs_or_with_a_damaged_one_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"neither episodes.jsonl .* nor metrics.jsonl"):
        write_report([tmp_path])
    write_log(tmp_path, 3)
    (tmp_path / "metrics.jsonl").write_text('{"time": 1.0}\n' + (tmp_path / "metrics.jsonl").read_text())
    with pytest.raises(ReportError, match=r"metrics.jsonl:1: not a training record: .*no 'updates'"):
        write_report([tmp_path])
    result = subprocess.run(
        [sys.executable, "-m", "pld_ros.cli", "report", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "neither episodes.jsonl" in result.stderr
