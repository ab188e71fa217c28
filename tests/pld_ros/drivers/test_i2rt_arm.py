"""I2rtArmBackend on the i2rt driver's kinematic SimRobot (no CAN bus here).

The SimRobot teleports its joints to each command, so what is measured is the backend itself:
the IK, the limits, the gripper mapping and the blocking moves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

# Before anything imports mujoco (i2rt does): pld_ros.sim sets its headless OpenGL default, which
# mujoco reads once, at its first import; the simulated worlds' tests render in this process too.
import pld_ros.sim  # noqa: F401
from pld_ros.core.rate import RateKeeper
from pld_ros.core.spatial import Pose, rotation_angle_between
from pld_ros.drivers.arm import ArmFault
from pld_ros.drivers.i2rt_arm import ARM_JOINTS, I2rtArmBackend
from pld_ros.profile import I2rtArm, SafetyLimits

LIMITS = SafetyLimits(workspace_min=(0.1, -0.4, 0.01), workspace_max=(0.55, 0.4, 0.45))
CONFIG = I2rtArm(driver="i2rt", can_channel="can_test", safety=LIMITS)
# TCP 28 cm ahead of and 12 cm above the base, pointing down, away from every joint limit.
READY = (0.0, 1.6, 1.35, -1.32, 0.0, 1.57)
JOINT_SPEED = 4.0


@pytest.fixture
def arm() -> Iterator[I2rtArmBackend]:
    backend = I2rtArmBackend(CONFIG, sim=True, joint_speed=JOINT_SPEED)
    backend.connect()
    backend.move_joints(READY)
    try:
        yield backend
    finally:
        backend.close()


def joints(arm: I2rtArmBackend) -> np.ndarray:
    return arm.read_state().joint_positions


def test_tracks_a_20hz_stream_of_targets_integrated_from_deltas(arm: I2rtArmBackend) -> None:
    start = arm.read_state().ee_pose
    target = start
    rate = RateKeeper(20.0)
    position_errors, rotation_errors, ik_seconds = [], [], []
    for tick in range(60):
        rate.wait()
        t = tick / 20.0
        # A smooth 3 s figure in all six axes, up to 10 mm and 0.03 rad per tick, integrated the
        # way the safety layer integrates policy deltas.
        translation = np.array([0.008 * np.cos(2.0 * t), 0.01 * np.cos(1.3 * t), -0.006 * np.sin(1.7 * t)])
        rotation = np.array([0.02 * np.cos(1.1 * t), 0.015 * np.sin(0.9 * t), 0.03 * np.cos(1.5 * t)])
        target = target.moved(translation, rotation)
        arm.command(target, 0.5)
        state = arm.read_state()
        ik = arm.last_ik
        assert ik is not None and ik.converged, ik
        ik_seconds.append(ik.seconds)
        position_errors.append(float(np.linalg.norm(state.ee_pose.position - target.position)))
        rotation_errors.append(rotation_angle_between(state.ee_pose.orientation, target.orientation))
    travelled = float(np.linalg.norm(target.position - start.position))
    print(
        f"tracking: position max {max(position_errors) * 1e3:.3f} mm, rotation max "
        f"{max(rotation_errors) * 1e3:.2f} mrad; IK median {np.median(ik_seconds) * 1e3:.2f} ms, "
        f"max {max(ik_seconds) * 1e3:.2f} ms; travelled {travelled * 1e3:.0f} mm"
    )
    assert travelled > 0.05
    assert max(position_errors) < 1e-3
    assert max(rotation_errors) < 5e-3
    # Generous: other simulations share the two cores.
    assert np.median(ik_seconds) < 0.02


def test_unreachable_target_is_clipped_within_joint_limits_and_reported(arm: I2rtArmBackend) -> None:
    lower, upper = arm.joint_limits
    start = arm.read_state().ee_pose
    far = Pose(np.array([0.9, 0.3, 0.6]), start.orientation)
    for _ in range(30):
        arm.command(far, 0.0)
        measured = joints(arm)
        assert np.all(measured >= lower - 1e-9) and np.all(measured <= upper + 1e-9), measured
    ik = arm.last_ik
    assert ik is not None and not ik.converged
    reached = arm.read_state().ee_pose.position
    # The reported error is the real one, and the arm got as close as it could: nearer than it was.
    assert ik.position_error == pytest.approx(float(np.linalg.norm(reached - far.position)), abs=1e-6)
    assert ik.position_error < float(np.linalg.norm(start.position - far.position)) - 0.1
    # Behind the base and under the table: out of reach, still within the limits.
    arm.command(Pose(np.array([-0.6, 0.0, -0.4]), start.orientation), 0.0)
    measured = joints(arm)
    assert np.all(measured >= lower - 1e-9) and np.all(measured <= upper + 1e-9), measured
    # The limits are the driver model's (joint2 and joint3 stop at 0 rad).
    assert lower[1] == pytest.approx(0.0) and lower[2] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("position", "orientation", "closure"),
    [
        ((np.nan, 0.0, 0.1), (0.0, 0.0, 0.0, 1.0), 0.0),
        ((0.3, 0.0, 0.1), (0.0, 0.0, np.inf, 1.0), 0.0),
        ((0.3, 0.0, 0.1), (0.0, 0.0, 0.0, 1.0), np.nan),
    ],
)
def test_non_finite_target_is_refused(
    arm: I2rtArmBackend, position: tuple[float, ...], orientation: tuple[float, ...], closure: float
) -> None:
    before = joints(arm)
    target = Pose(np.array(position), np.array(orientation))
    with pytest.raises(ValueError, match="non-finite"):
        arm.command(target, closure)
    np.testing.assert_array_equal(joints(arm), before)


def test_gripper_closure_drives_the_gripper_joint(arm: I2rtArmBackend) -> None:
    pose = arm.read_state().ee_pose
    widths = {}
    for closure in (0.0, 0.25, 1.0):
        arm.command(pose, closure)
        state = arm.read_state()
        assert state.gripper_closure == pytest.approx(closure)
        # The driver's command space is the opening: 1 open, 0 closed.
        assert arm.driver.get_observations()["gripper_pos"][0] == pytest.approx(1.0 - closure)
        widths[closure] = state.gripper_width
    assert widths[0.0] == pytest.approx(0.095, abs=1e-3)
    assert widths[0.25] == pytest.approx(0.75 * widths[0.0])
    assert widths[1.0] == pytest.approx(0.0)


def test_move_joints_reaches_the_home_pose_at_the_joint_speed(arm: I2rtArmBackend) -> None:
    home = CONFIG.home_joints
    began = time.monotonic()
    arm.move_joints(home)
    took = time.monotonic() - began
    np.testing.assert_allclose(joints(arm), home, atol=1e-9)
    assert took >= 0.9 * max(abs(a - b) for a, b in zip(READY, home, strict=True)) / JOINT_SPEED
    # The IK continues from the new configuration: a small step from there tracks exactly.
    pose = arm.read_state().ee_pose
    arm.command(pose.moved(np.array([0.0, 0.0, 0.01]), np.zeros(3)), 0.0)
    assert arm.last_ik is not None and arm.last_ik.converged
    with pytest.raises(ValueError, match="outside"):
        arm.move_joints((0.0, -0.5, 0.0, 0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="finite"):
        arm.move_joints((0.0, 0.0, 0.0))


def test_hold_stops_a_move_where_it_is(arm: I2rtArmBackend) -> None:
    goal = (-2.5, 1.2, 1.0, -1.0, 0.4, 1.2)
    failure: list[BaseException] = []

    def move() -> None:
        try:
            arm.move_joints(goal)
        except ArmFault as fault:
            failure.append(fault)

    mover = threading.Thread(target=move)
    mover.start()
    # Hold as soon as it is under way (the whole move takes 0.6 s).
    deadline = time.monotonic() + 2.0
    while np.allclose(joints(arm), READY) and time.monotonic() < deadline:
        time.sleep(0.005)
    arm.hold()
    held = joints(arm)
    mover.join(timeout=5.0)
    assert not mover.is_alive()
    assert failure and "interrupted" in str(failure[0])
    assert not np.allclose(held, READY) and not np.allclose(held, goal)
    time.sleep(0.2)
    np.testing.assert_array_equal(joints(arm), held)
    # Commanding resumes from where it held.
    pose = arm.read_state().ee_pose
    arm.command(pose, 0.0)
    np.testing.assert_allclose(joints(arm), held, atol=1e-3)


def test_not_connected_and_motor_errors_are_faults(arm: I2rtArmBackend) -> None:
    fresh = I2rtArmBackend(CONFIG, sim=True)
    with pytest.raises(ArmFault) as raised:
        fresh.read_state()
    assert raised.value.connection_lost
    fresh.close()

    # The CAN driver's control thread stops itself on a motor error; the SimRobot has none, so
    # give it one that has stopped.
    arm.driver.motor_chain = SimpleNamespace(running=False)
    with pytest.raises(ArmFault) as raised:
        arm.read_state()
    assert not raised.value.connection_lost
    arm.recover()
    state = arm.read_state()
    assert state.joint_names == ARM_JOINTS and not state.error

    arm.close()
    arm.close()
    with pytest.raises(ArmFault):
        arm.command(state.ee_pose, 0.0)
