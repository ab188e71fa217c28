"""The stage machine: debounced success, timeouts, recovery edges, abort, cycles, external failure."""

from __future__ import annotations

import math

import pytest

from pld_ros.core.stage_machine import StageMachine, StageStatus, TaskOutcome
from pld_ros.profile import Stage

DT = 0.05


def lift(**overrides: object) -> Stage:
    return Stage.model_validate({"name": "lift", "threshold": 0.9, "debounce_frames": 3, **overrides})


def feed(machine: StageMachine, values: list[float], start: float = 0.0) -> list[StageStatus]:
    return [machine.update([v], start + i * DT).status for i, v in enumerate(values)]


def test_a_single_positive_frame_or_broken_streaks_never_succeed() -> None:
    machine = StageMachine([lift()])
    machine.reset(0.0)
    statuses = feed(machine, [0.95, 0.1, 0.95, 0.95, 0.5, 0.99, 0.99, 0.2, 0.91])
    assert set(statuses) == {StageStatus.ACTIVE}
    update = machine.update([0.3], 1.0)
    assert update.outcome is None and update.positive_streak == 0
    # Exactly at the threshold is not above it; NaN is never positive.
    feed(machine, [0.9, math.nan, 0.95, 0.95, 0.9], start=1.1)
    assert machine.snapshot(2.0).positive_streak == 0


def test_exactly_debounce_frames_in_a_row_succeed() -> None:
    machine = StageMachine([lift()])
    machine.reset(0.0)
    first, second = machine.update([0.95], 0.0), machine.update([0.95], DT)
    assert (first.positive_streak, second.positive_streak) == (1, 2) and second.outcome is None
    third = machine.update([0.95], 2 * DT)
    assert third.status is StageStatus.SUCCEEDED and third.outcome is TaskOutcome.SUCCESS
    assert third.cycle == 1 and third.name == "lift" and "succeeded" in third.reason
    # Terminal until reset, whatever comes next.
    assert machine.update([0.0], 100.0) == third
    machine.reset(200.0)
    assert machine.update([0.0], 200.0).outcome is None and machine.snapshot(200.0).cycle == 0


def test_heads_and_bad_scores() -> None:
    machine = StageMachine([lift(head=1)])
    machine.reset(0.0)
    for t in range(3):
        assert machine.update([0.95, 0.0], t * DT).outcome is None
    for t in range(3):
        update = machine.update([0.0, 0.95], t * DT)
    assert update.outcome is TaskOutcome.SUCCESS
    machine.reset(0.0)
    with pytest.raises(ValueError, match="head 1"):
        machine.update([0.5], 0.0)
    with pytest.raises(RuntimeError, match="reset"):
        StageMachine([lift()]).update([0.5], 0.0)


def test_a_timeout_aborts_without_a_recovery_stage() -> None:
    machine = StageMachine([lift(timeout=1.0)])
    machine.reset(10.0)
    assert machine.update([0.95], 10.99).outcome is None
    update = machine.update([0.95], 11.0)
    assert update.status is StageStatus.FAILED and update.outcome is TaskOutcome.FAILURE
    assert "timed out after 1.0 s" in update.reason and update.cycle == 0


def test_timeouts_route_to_recovery_and_recovery_success_returns_to_the_named_stage() -> None:
    stages = [
        Stage(name="grasp", timeout=1.0, on_success="lift", on_failure="regrasp", debounce_frames=2),
        Stage(name="lift", timeout=1.0, on_success="done", on_failure="abort", debounce_frames=2),
        Stage(name="regrasp", head=2, timeout=1.0, on_success="grasp", on_failure="abort", debounce_frames=2),
    ]
    machine = StageMachine(stages)
    machine.reset(0.0)
    failed = machine.update([0.0, 0.0, 0.0], 1.0)
    assert (failed.name, failed.status, failed.outcome) == ("grasp", StageStatus.FAILED, None)
    recovering = machine.snapshot(1.0)
    assert (recovering.name, recovering.index, recovering.status) == ("regrasp", 2, StageStatus.RECOVERING)
    assert recovering.time_in_stage == 0.0 and "grasp timed out" in recovering.reason
    machine.update([0.0, 0.0, 0.8], 1.1)
    succeeded = machine.update([0.0, 0.0, 0.8], 1.2)
    assert (succeeded.name, succeeded.status) == ("regrasp", StageStatus.SUCCEEDED)
    back = machine.snapshot(1.5)
    assert (back.name, back.status) == ("grasp", StageStatus.ACTIVE)
    assert back.time_in_stage == pytest.approx(0.3)
    # The recovery stage's own failure edge: abort.
    machine.update([0.0, 0.0, 0.0], 2.2)
    assert machine.snapshot(2.2).name == "regrasp"
    aborted = machine.update([0.0, 0.0, 0.0], 3.2)
    assert aborted.outcome is TaskOutcome.FAILURE and aborted.name == "regrasp"


def test_an_external_failure_routes_like_a_timeout() -> None:
    stages = [
        Stage(name="carry", on_success="done", on_failure="pick"),
        Stage(name="pick", on_success="carry", on_failure="abort"),
    ]
    machine = StageMachine(stages)
    machine.reset(0.0)
    machine.update([0.95], 0.0)
    update = machine.fail("cube dropped", 0.5)
    assert update.status is StageStatus.FAILED and update.reason == "carry failed: cube dropped"
    assert machine.snapshot(0.5).name == "pick" and machine.snapshot(0.5).positive_streak == 0
    final = machine.fail("cube lost", 0.6)
    assert final.outcome is TaskOutcome.FAILURE
    assert machine.fail("again", 0.7) == final


def test_cycles_count_each_completion_of_a_looping_task() -> None:
    # A YAM-style loop: the last stage succeeds back into the first.
    stages = [
        Stage(name=name, head=i, debounce_frames=1, on_success=nxt, timeout=100.0)
        for i, (name, nxt) in enumerate(
            [("pick", "insert"), ("insert", "remove"), ("remove", "place"), ("place", "pick")]
        )
    ]
    machine = StageMachine(stages)
    machine.reset(0.0)
    t = 0.0
    for cycle in range(1, 4):
        for head in range(4):
            scores = [0.0] * 4
            scores[head] = 1.0
            t += DT
            update = machine.update(scores, t)
            assert update.status is StageStatus.SUCCEEDED and update.outcome is None
        assert machine.snapshot(t).cycle == cycle and machine.snapshot(t).name == "pick"


def test_a_stage_graph_naming_unknown_stages_is_refused() -> None:
    with pytest.raises(ValueError, match="on_success 'carry' is not a stage"):
        StageMachine([Stage(name="lift", on_success="carry")])
    with pytest.raises(ValueError, match="on_failure 'fix' is not a stage"):
        StageMachine([Stage(name="lift", on_failure="fix")])
    with pytest.raises(ValueError, match="unique"):
        StageMachine([Stage(name="lift"), Stage(name="lift")])
    with pytest.raises(ValueError, match="at least one"):
        StageMachine([])


def test_retries_try_a_failed_stage_again_before_its_failure_route() -> None:
    stages = [
        Stage(name="work", head=0, timeout=1.0, on_failure="recover"),
        Stage(name="recover", head=1, timeout=1.0, retries=2, on_success="work", on_failure="abort"),
    ]
    machine = StageMachine(stages)
    machine.reset(0.0)
    assert machine.fail("dropped", 0.1).name == "work"
    assert machine.snapshot(0.1).name == "recover"
    # Two retries: the recovery is tried three times in all, then "abort".
    first = machine.fail("dropped again", 0.2)
    assert first.status is StageStatus.FAILED and first.outcome is None
    retry = machine.snapshot(0.2)
    assert (retry.name, retry.status, retry.reason) == (
        "recover",
        StageStatus.RECOVERING,
        "recover failed: dropped again (retry 1)",
    )
    assert machine.update([0.0, 0.0], 1.25).outcome is None, "each retry has its own timeout"
    assert machine.update([0.0, 0.0], 1.3).outcome is None and machine.snapshot(1.3).reason.endswith(
        "(retry 2)"
    )
    assert machine.update([0.0, 0.0], 2.4).outcome is TaskOutcome.FAILURE
    # A success in between starts the count over.
    machine.reset(0.0)
    machine.fail("dropped", 0.0)
    machine.fail("dropped", 0.0)
    for t in range(3):
        machine.update([0.0, 1.0], 0.1 + t * DT)
    assert machine.snapshot(0.3).name == "work"
    machine.fail("dropped", 0.4)
    assert machine.fail("dropped", 0.5).outcome is None and machine.fail("dropped", 0.6).outcome is None
    assert machine.fail("dropped", 0.7).outcome is TaskOutcome.FAILURE, "two retries, then the route"
