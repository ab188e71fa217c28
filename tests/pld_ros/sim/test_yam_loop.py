"""The YAM loop in the simulated world on simulated time: the real supervisor, stage machine,
safety filter and i2rt sim arm, with the scripted expert standing in for the VLA and the world's
privileged signals for the classifier (neither a VLA nor a trained classifier can run here)."""

from __future__ import annotations

import itertools
from pathlib import Path

from pld_ros.core.episode_log import read_episodes
from pld_ros.core.loop_stats import DETECTOR, TIMEOUT, summarize_loop
from pld_ros.profile import load_profile
from pld_ros.sim.yam_loop import LoopFaults, run_yam_loop


def test_drops_and_stalls_are_recovered_without_help(tmp_path: Path) -> None:
    profile = load_profile("yam_gpu_insertion", sim=True)
    faults = LoopFaults(drop_rate=0.01, stall_rate=0.1)
    report = run_yam_loop(profile, 6.0, tmp_path, faults, seed=1)
    assert report.injected["drop"] >= 3 and report.injected["stall"] >= 3
    assert read_episodes(tmp_path) == report.records, "every attempt is in the log"
    summary = summarize_loop(report.records)
    assert summary.causes[DETECTOR] >= 3 and summary.causes[TIMEOUT] >= 1
    assert summary.interventions == 0 and summary.longest_unattended_s == summary.operating_s >= 4 * 60
    # Every failed stage went to the recovery, and the loop went on to complete cycles.
    records = report.records
    for failed, after in itertools.pairwise(records):
        if failed.outcome == "failure":
            assert after.stage == "recover" and after.recovering and after.continued
    assert summary.recovered == summary.recoveries - sum(
        r.outcome == "failure" for r in records if r.recovering
    )
    assert summary.cycles >= 3


def test_a_knocked_over_card_needs_a_human_and_the_loop_goes_on_after_the_reset(tmp_path: Path) -> None:
    profile = load_profile("yam_gpu_insertion", sim=True)
    report = run_yam_loop(profile, 7.0, tmp_path, LoopFaults(knock_times=(30.0,)), seed=3)
    assert report.injected["knock"] == 1
    summary = summarize_loop(report.records)
    assert summary.interventions >= 1
    aborted = [i for i, r in enumerate(report.records) if r.stage == "recover" and r.outcome == "failure"]
    assert aborted, "the card on its side cannot be picked: the recovery fails"
    restarted = [r for r in report.records[1:] if not r.continued]
    assert restarted and all(r.stage == "insert_slot1" for r in restarted)
    assert summary.cycles >= 1
