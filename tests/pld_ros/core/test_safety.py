from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pld_ros.core import safety
from pld_ros.core.safety import Decision, DeltaCommand, SafetyFilter
from pld_ros.core.spatial import Pose, rotation_angle_between
from pld_ros.profile import SafetyLimits

LIMITS = SafetyLimits(
    workspace_min=(0.3, -0.2, 0.05),
    workspace_max=(0.7, 0.2, 0.5),
    max_translation_step=0.02,
    max_rotation_step=0.1,
    gripper_min=0.0,
    gripper_max=0.9,
    command_timeout_ticks=3,
)
DOWN = (1.0, 0.0, 0.0, 0.0)  # gripper pointing down
HOME = Pose.of((0.5, 0.0, 0.3), DOWN)


def fresh(measured: Pose = HOME) -> SafetyFilter:
    f = SafetyFilter(LIMITS)
    f.reset(measured, 0.0)
    return f


def move(
    dx: float = 0.0,
    dy: float = 0.0,
    dz: float = 0.0,
    rot: tuple[float, float, float] = (0, 0, 0),
    g: float = 0.0,
) -> DeltaCommand:
    return DeltaCommand.of((dx, dy, dz), rot, g)


def test_small_delta_passes_unchanged() -> None:
    out = fresh().step(move(dx=0.01, dz=-0.005), HOME)
    assert out.decision is Decision.MOVE
    np.testing.assert_allclose(out.target.position, [0.51, 0.0, 0.295])
    assert sum(fresh().counters.values()) == 0


def test_translation_step_is_scaled_to_the_limit_keeping_direction() -> None:
    f = fresh()
    out = f.step(move(dx=0.3, dy=0.4), HOME)
    step = out.target.position - HOME.position
    assert np.linalg.norm(step) == pytest.approx(0.02)
    np.testing.assert_allclose(step[:2] / np.linalg.norm(step), [0.6, 0.8])
    assert f.counters[safety.TRANSLATION_CLIPPED] == 1


def test_rotation_step_is_limited() -> None:
    f = fresh()
    out = f.step(move(rot=(0.0, 0.0, 2.0)), HOME)
    assert rotation_angle_between(out.target.orientation, HOME.orientation) == pytest.approx(0.1)
    assert f.counters[safety.ROTATION_CLIPPED] == 1


def test_target_never_leaves_the_workspace() -> None:
    f = fresh()
    measured = HOME
    for _ in range(100):
        out = f.step(move(dz=0.02, dx=0.02), measured)
        measured = out.target  # a perfect arm
    assert out.target.position[2] == pytest.approx(0.5)
    assert out.target.position[0] == pytest.approx(0.7)
    assert f.counters[safety.WORKSPACE_CLIPPED] > 0


def test_target_lead_over_a_blocked_arm_is_bounded() -> None:
    f = fresh()
    for _ in range(50):
        out = f.step(move(dy=0.02), HOME)  # the arm never moves
    assert np.linalg.norm(out.target.position - HOME.position) == pytest.approx(0.1)
    assert f.counters[safety.LAG_CLIPPED] > 0


def test_target_rotation_lead_over_an_arm_that_does_not_turn_is_bounded() -> None:
    f = fresh()
    for _ in range(50):
        out = f.step(move(rot=(0.0, 0.0, 0.1)), HOME)  # the arm never turns
    assert rotation_angle_between(out.target.orientation, HOME.orientation) == pytest.approx(0.5)
    assert f.counters[safety.LAG_CLIPPED] > 0
    # Still turning the commanded way, about the vertical axis.
    _, turn = HOME.delta_to(out.target)
    np.testing.assert_allclose(turn, [0.0, 0.0, 0.5], atol=1e-9)


def test_a_held_target_follows_an_arm_carried_away_between_commands() -> None:
    # franky-sim's arm, swung by a wrist spun at the rotation limit, ended 0.1-0.7 m from a
    # target held over a tick without a command.
    f = fresh()
    f.step(move(dx=0.02), HOME)
    away = Pose.of((0.5, 0.15, 0.1), (0.0, 1.0, 0.0, 0.0))
    for _ in range(LIMITS.command_timeout_ticks + 1):  # the idle ticks, then the hold
        out = f.step(None, away)
        assert np.linalg.norm(out.target.position - away.position) == pytest.approx(0.1)
        assert rotation_angle_between(out.target.orientation, away.orientation) == pytest.approx(0.5)
    assert out.decision is Decision.HOLD
    assert f.counters[safety.LAG_CLIPPED] > 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_commands_are_rejected(bad: float) -> None:
    for command in (move(dx=bad), move(rot=(0, bad, 0)), move(g=bad)):
        f = fresh()
        f.step(move(dx=0.01, g=0.5), HOME)
        out = f.step(command, HOME)
        np.testing.assert_allclose(out.target.position, [0.51, 0.0, 0.3])
        np.testing.assert_array_equal(out.target.orientation, HOME.orientation)
        assert out.gripper == 0.5
        assert f.counters[safety.NONFINITE] == 1


def test_gripper_is_clipped_to_its_range() -> None:
    f = fresh()
    assert f.step(move(g=1.0), HOME).gripper == pytest.approx(0.9)
    assert f.step(move(g=-0.5), HOME).gripper == 0.0
    assert f.counters[safety.GRIPPER_CLIPPED] == 2


def test_timeout_holds_after_the_configured_ticks_and_counts_once() -> None:
    f = fresh()
    f.step(move(dx=0.01), HOME)
    decisions = [f.step(None, HOME).decision for _ in range(6)]
    assert decisions == [
        Decision.MOVE,
        Decision.MOVE,
        Decision.HOLD,
        Decision.HOLD,
        Decision.HOLD,
        Decision.HOLD,
    ]
    assert f.counters[safety.TIMEOUTS] == 1
    assert f.step(move(dx=0.01), HOME).decision is Decision.MOVE


def test_nan_commands_do_not_keep_the_arm_alive() -> None:
    f = fresh()
    decisions = [f.step(move(dx=float("nan")), HOME).decision for _ in range(3)]
    assert decisions[-1] is Decision.HOLD


def test_estop_latches_until_cleared() -> None:
    f = fresh()
    f.engage_estop("operator")
    for _ in range(3):
        out = f.step(move(dx=0.01), HOME)
        assert out.decision is Decision.ESTOP
        np.testing.assert_array_equal(out.target.position, HOME.position)
    assert f.estop_reason == "operator"
    assert f.counters[safety.ESTOP_REJECTED] == 3
    f.clear_estop()
    assert f.step(move(dx=0.01), HOME).decision is Decision.MOVE


def test_reset_pulls_an_outside_pose_into_the_box() -> None:
    f = fresh(Pose.of((0.9, 0.0, 0.3), DOWN))
    assert f.target is not None
    assert f.target.position[0] == pytest.approx(0.7)


def test_step_before_reset_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="before reset"):
        SafetyFilter(LIMITS).step(None, HOME)


finite = st.floats(-1.0, 1.0)
anything = st.one_of(finite, st.sampled_from([float("nan"), float("inf"), 1e9, -1e9]))
commands = st.one_of(
    st.none(),
    st.builds(
        lambda t, r, g: DeltaCommand.of(t, r, g),
        st.tuples(anything, anything, anything),
        st.tuples(anything, anything, anything),
        anything,
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(commands, min_size=1, max_size=40), st.floats(0.0, 1.0))
def test_invariants_hold_for_any_command_sequence(
    sequence: list[DeltaCommand | None], tracking: float
) -> None:
    """Whatever arrives, the target stays in the box, near the arm, and moves at most one step."""
    f = fresh()
    measured = HOME
    previous = HOME.position
    low, high = np.array(LIMITS.workspace_min), np.array(LIMITS.workspace_max)
    for command in sequence:
        out = f.step(command, measured)
        position = out.target.position
        assert np.all(np.isfinite(position)) and np.all(np.isfinite(out.target.orientation))
        assert np.all(position >= low - 1e-12) and np.all(position <= high + 1e-12)
        assert np.linalg.norm(position - previous) <= LIMITS.max_translation_step + 1e-9
        assert LIMITS.gripper_min <= out.gripper <= LIMITS.gripper_max
        # An arm that covers a fraction of the remaining distance each tick.
        measured = Pose(measured.position + tracking * (position - measured.position), out.target.orientation)
        previous = position
