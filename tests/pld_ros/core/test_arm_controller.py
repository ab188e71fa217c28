"""ArmController with the YAM backend on the i2rt driver's simulated robot: the safety rules hold
for every backend (the Franka ones are in tests/pld_ros/drivers/test_franky_arm.py)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

import pld_ros.sim  # noqa: F401  (sets the rendering backend before mujoco is imported)
from pld_ros.core import safety
from pld_ros.core.arm_controller import ArmController, ArmMode, TickReport
from pld_ros.core.safety import DeltaCommand
from pld_ros.drivers.i2rt_arm import I2rtArmBackend
from pld_ros.profile import I2rtArm, SafetyLimits

READY = (0.0, 1.6, 1.35, -1.32, 0.0, 1.57)
LIMITS = SafetyLimits(
    workspace_min=(0.1, -0.3, 0.05),
    workspace_max=(0.45, 0.3, 0.4),
    max_translation_step=0.01,
    max_rotation_step=0.05,
    command_timeout_ticks=3,
)


@pytest.fixture
def controller() -> Iterator[ArmController]:
    backend = I2rtArmBackend(
        I2rtArm(driver="i2rt", home_joints=READY, safety=LIMITS), sim=True, joint_speed=4.0
    )
    ctrl = ArmController(backend, LIMITS)
    report = ctrl.tick(None, 0.0)
    assert report.mode is ArmMode.IDLE, report.error
    backend.move_joints(READY)
    ctrl.tick(DeltaCommand.of((0, 0, 0), (0, 0, 0), 0.0), 0.05)  # restart from the ready pose
    try:
        yield ctrl
    finally:
        ctrl.close()


def run(ctrl: ArmController, commands: list[DeltaCommand | None]) -> list[TickReport]:
    return [ctrl.tick(command, 0.1 + i * 0.05) for i, command in enumerate(commands)]


def tcp(report: TickReport) -> np.ndarray:
    assert report.state is not None
    return report.state.ee_pose.position


def test_deltas_are_integrated_and_tracked(controller: ArmController) -> None:
    start = tcp(run(controller, [None])[0])
    reports = run(controller, [DeltaCommand.of((0.005, 0.002, -0.003), (0, 0, 0.02), 0.0)] * 10)
    assert reports[-1].mode is ArmMode.MOVING
    # A tick reads the state before it commands: the last command shows in the next tick's state.
    [after] = run(controller, [None])
    np.testing.assert_allclose(tcp(after), start + np.array([0.05, 0.02, -0.03]), atol=0.002)


def test_step_and_workspace_limits_hold_with_the_yam(controller: ArmController) -> None:
    reports = run(controller, [DeltaCommand.of((0.0, 0.0, -1.0), (0, 0, 0), 0.0)] * 60)
    heights = [tcp(r)[2] for r in reports]
    assert min(heights) >= LIMITS.workspace_min[2] - 0.002
    assert max(abs(np.diff(heights))) <= LIMITS.max_translation_step + 0.002
    assert controller.safety.counters[safety.TRANSLATION_CLIPPED] == 60
    assert controller.safety.counters[safety.WORKSPACE_CLIPPED] > 0


def test_nan_and_silence_hold_the_yam(controller: ArmController) -> None:
    run(controller, [DeltaCommand.of((0.005, 0, 0), (0, 0, 0), 0.0)] * 3)
    reports = run(controller, [DeltaCommand.of((float("nan"), 0, 0), (0, 0, 0), 0.0)] * 5)
    assert [r.mode for r in reports][-1] is ArmMode.HOLDING
    assert controller.safety.counters[safety.NONFINITE] == 5
    held = tcp(reports[-1])
    later = run(controller, [None] * 5)
    np.testing.assert_allclose(tcp(later[-1]), held, atol=1e-4)


def test_estop_latches_with_the_yam(controller: ArmController) -> None:
    controller.engage_estop("test")
    before = tcp(run(controller, [None])[0])
    reports = run(controller, [DeltaCommand.of((0.01, 0, 0), (0, 0, 0), 0.0)] * 5)
    assert {r.mode for r in reports} == {ArmMode.ESTOP}
    np.testing.assert_allclose(tcp(reports[-1]), before, atol=1e-4)
    assert controller.clear_estop()[0]
    assert run(controller, [DeltaCommand.of((0.01, 0, 0), (0, 0, 0), 0.0)])[0].mode is ArmMode.MOVING


def test_homing_brings_the_joints_back_and_commanding_restarts_there(controller: ArmController) -> None:
    backend = controller.backend
    run(controller, [DeltaCommand.of((0.01, 0.01, 0.0), (0, 0, 0.05), 0.0)] * 8)
    [away] = run(controller, [None])
    assert away.state is not None
    assert np.abs(away.state.joint_positions - READY).max() > 0.02
    done, homed = controller.home(READY, 1.0)
    assert done and homed.events == ["homed"] and homed.mode is ArmMode.HOLDING
    assert homed.state is not None
    np.testing.assert_allclose(homed.state.joint_positions, READY, atol=0.01)
    assert controller.counters["homings"] == 1
    # The next delta starts from the homed pose, not from the target integrated before.
    [moved] = run(controller, [DeltaCommand.of((0.0, 0.0, 0.0), (0, 0, 0), 0.0)])
    assert moved.target is not None
    np.testing.assert_allclose(moved.target.position, homed.state.ee_pose.position, atol=1e-3)
    # Under e-stop the arm does not move.
    controller.engage_estop("test")
    done, refused = controller.home(READY, 2.0)
    assert not done and refused.mode is ArmMode.ESTOP
    assert refused.events == ["homing refused: e-stop (test)"]
    # Nor while the robot is gone.
    controller.clear_estop()
    controller.close()
    done, refused = controller.home(READY, 3.0)
    assert not done and refused.mode is ArmMode.DISCONNECTED
    assert refused.events == ["homing refused: not connected"]
    assert controller.counters["homings"] == 1
    assert isinstance(backend, I2rtArmBackend)


def test_a_motor_fault_is_recovered_and_commanding_restarts_from_the_measured_pose(
    controller: ArmController,
) -> None:
    backend = controller.backend
    assert isinstance(backend, I2rtArmBackend)
    run(controller, [DeltaCommand.of((0.005, 0, 0), (0, 0, 0), 0.0)] * 3)
    # The CAN driver stops its motor chain on a motor error; the simulated robot has no motor
    # chain, so the test gives it a stopped one (this is the only stand-in in this file).
    backend.driver.motor_chain = SimpleNamespace(running=False)
    [faulted] = run(controller, [DeltaCommand.of((0.005, 0, 0), (0, 0, 0), 0.0)])
    assert any(e.startswith("robot error") for e in faulted.events)
    assert "recovered" in faulted.events
    assert controller.counters["recoveries"] == 1
    assert run(controller, [DeltaCommand.of((0.005, 0, 0), (0, 0, 0), 0.0)])[0].mode is ArmMode.MOVING
