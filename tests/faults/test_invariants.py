"""The fault suite's limit check catches what it is there to catch (and only that)."""

from __future__ import annotations

import numpy as np
import pytest

from pld_msgs.msg import RobotState
from pld_ros.core.spatial import Pose
from pld_ros.profile import SafetyLimits
from tests.faults.invariants import limit_violations

pytestmark = [pytest.mark.faults, pytest.mark.ros]

LIMITS = SafetyLimits(
    workspace_min=(0.2, -0.4, 0.05),
    workspace_max=(0.7, 0.4, 0.6),
    max_translation_step=0.02,
    max_rotation_step=0.1,
)
RATE = 20.0
DOWN = (1.0, 0.0, 0.0, 0.0)


def state(tick: int, measured: Pose, target: Pose, mode: int = RobotState.MODE_MOVING) -> RobotState:
    message = RobotState(mode=mode, gripper_closure=0.0)
    stamp = tick / RATE
    message.header.stamp.sec = int(stamp)
    message.header.stamp.nanosec = round((stamp - int(stamp)) * 1e9)
    for field, pose in (("ee_pose", measured), ("ee_target", target)):
        out = getattr(message, field)
        out.position.x, out.position.y, out.position.z = (float(v) for v in pose.position)
        out.orientation.x, out.orientation.y, out.orientation.z, out.orientation.w = (
            float(v) for v in pose.orientation
        )
    return message


def at(x: float, turn: float = 0.0) -> Pose:
    return Pose.of((x, 0.0, 0.3), DOWN).moved(np.zeros(3), np.array([0.0, 0.0, turn]))


def test_steps_within_the_limits_pass() -> None:
    states = [state(i, at(0.4 + 0.015 * i), at(0.4 + 0.015 * (i + 1), 0.09 * i)) for i in range(5)]
    assert limit_violations(states, LIMITS, RATE) == []


def test_a_jump_a_turn_and_a_target_outside_the_box_are_each_reported() -> None:
    jump = [state(0, at(0.4), at(0.41)), state(1, at(0.4), at(0.45))]
    turn = [state(0, at(0.4), at(0.4)), state(1, at(0.4), at(0.4, 0.3))]
    outside = [state(0, at(0.69), at(0.75))]
    nan = [state(0, at(0.4), Pose(np.array([np.nan, 0.0, 0.3]), np.array(DOWN)))]
    assert "moved 0.0400 m" in " ".join(limit_violations(jump, LIMITS, RATE))
    assert "turned 0.3000 rad" in " ".join(limit_violations(turn, LIMITS, RATE))
    assert "outside the workspace" in " ".join(limit_violations(outside, LIMITS, RATE))
    assert "non-finite" in " ".join(limit_violations(nan, LIMITS, RATE))


def test_the_first_step_after_a_hold_is_bounded_from_the_measured_pose() -> None:
    # The arm lags its held target by 0.05 rad; resuming turns 0.1 rad from where the arm is:
    # 0.15 rad from the held target, and within the limit.
    held = state(0, at(0.4, 0.0), at(0.4, 0.05), RobotState.MODE_HOLDING)
    resumed = state(1, at(0.4, 0.0), at(0.4, -0.1))
    assert limit_violations([held, resumed], LIMITS, RATE) == []
    # Two steps from the measured pose is still too far.
    too_far = state(1, at(0.4, 0.0), at(0.4, -0.2))
    assert "turned 0.2000 rad" in " ".join(limit_violations([held, too_far], LIMITS, RATE))
