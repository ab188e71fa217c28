"""FrankyBackend and ArmController against franky-sim: the real libfranka protocol, MuJoCo physics.

franky-sim enforces no reflexes and no limits, so everything asserted about limits here is the
project's safety layer at work.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator

import franky
import numpy as np
import pytest

from pld_ros.core import safety
from pld_ros.core.arm_controller import ArmController, ArmMode, TickReport
from pld_ros.core.rate import RateKeeper, RobotClock
from pld_ros.core.safety import DeltaCommand
from pld_ros.drivers.franky_arm import FrankyBackend, _Hand, hand_request
from pld_ros.profile import FrankyArm, SafetyLimits
from tests.franky_sim import start_franky_sim
from tests.processes import Watched

HOST = "127.0.0.11"
LIMITS = SafetyLimits(
    workspace_min=(0.35, -0.25, 0.2),
    workspace_max=(0.65, 0.25, 0.6),
    max_translation_step=0.01,
    max_rotation_step=0.1,
    command_timeout_ticks=4,
)
CONFIG = FrankyArm(driver="franky", host=HOST, realtime="ignore", relative_dynamics_factor=0.3, safety=LIMITS)


@pytest.fixture
def sim() -> Iterator[Watched]:
    process = start_franky_sim(HOST)
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def controller(sim: Watched) -> Iterator[ArmController]:
    ctrl = ArmController(FrankyBackend(CONFIG), LIMITS, reconnect_interval=0.5)
    try:
        yield ctrl
    finally:
        ctrl.close()


def run(
    ctrl: ArmController, commands: list[DeltaCommand | None], rate: RateKeeper | None = None
) -> list[TickReport]:
    rate = rate or RateKeeper(20.0)
    return [ctrl.tick(command, rate.wait()) for command in commands]


def connected(ctrl: ArmController) -> TickReport:
    [report] = run(ctrl, [None])
    assert report.mode is ArmMode.IDLE, report.error
    assert report.state is not None
    return report


def position(report: TickReport) -> np.ndarray:
    assert report.state is not None
    return report.state.ee_pose.position


def test_a_20_hz_delta_stream_tracks_the_integrated_target_within_mm(
    controller: ArmController,
) -> None:
    start = position(connected(controller))
    square = [(0.005, 0, 0)] * 12 + [(0, 0.005, 0)] * 12 + [(-0.005, 0, 0)] * 12 + [(0, -0.005, -0.003)] * 12
    reports = run(controller, [DeltaCommand.of(d, (0, 0, 0), 0.0) for d in square])
    assert {r.mode for r in reports} == {ArmMode.MOVING}
    target = reports[-1].target
    assert target is not None
    np.testing.assert_allclose(target.position, start + np.array([0, 0, -0.036]), atol=1e-9)
    # Keep the last target for a second (fewer ticks than the timeout would hold the arm).
    settle = run(controller, [DeltaCommand.of((0, 0, 0), (0, 0, 0), 0.0)] * 20)
    error = np.linalg.norm(position(settle[-1]) - target.position)
    assert error < 0.003, f"tracking error {error * 1e3:.1f} mm"
    # And while moving, the arm follows the ramp closely (lag, not drift).
    lags = [np.linalg.norm(position(r) - r.target.position) for r in reports[10:] if r.target is not None]
    assert max(lags) < 0.03


def test_workspace_box_and_step_limits_hold(controller: ArmController) -> None:
    connected(controller)
    reports = run(controller, [DeltaCommand.of((0.0, 0.0, 0.5), (0, 0, 0), 0.0)] * 50)
    previous = None
    for report in reports:
        assert report.target is not None
        assert report.target.position[2] <= LIMITS.workspace_max[2] + 1e-9
        if previous is not None:
            assert np.linalg.norm(report.target.position - previous) <= LIMITS.max_translation_step + 1e-9
        previous = report.target.position
    settle = run(controller, [DeltaCommand.of((0, 0, 0), (0, 0, 0), 0.0)] * 20)
    assert position(settle[-1])[2] <= LIMITS.workspace_max[2] + 0.003
    counters = controller.safety.counters
    assert counters[safety.TRANSLATION_CLIPPED] == 50
    assert counters[safety.WORKSPACE_CLIPPED] > 0


def test_nan_commands_never_move_the_arm_and_time_out_into_hold(controller: ArmController) -> None:
    start = position(connected(controller))
    nan = DeltaCommand.of((float("nan"), 0.0, 0.0), (0, 0, 0), 0.0)
    reports = run(controller, [nan] * 10)
    assert controller.safety.counters[safety.NONFINITE] == 10
    assert np.linalg.norm(position(reports[-1]) - start) < 0.002
    assert reports[-1].mode is ArmMode.IDLE  # never commanded, so never moving


def test_command_timeout_holds_the_arm_and_resumes_without_a_jump(
    controller: ArmController,
) -> None:
    connected(controller)
    moving = run(controller, [DeltaCommand.of((0.01, 0, 0), (0, 0, 0), 0.0)] * 10)
    assert moving[-1].mode is ArmMode.MOVING
    silent = run(controller, [None] * 20)
    assert [r.mode for r in silent[:3]] == [ArmMode.MOVING] * 3
    assert silent[3].mode is ArmMode.HOLDING
    assert "command timeout: holding" in silent[3].events
    held = position(silent[-1])
    # Resuming starts from the measured pose, not from the target integrated before the hold. The
    # arm was heading for the box's edge at 0.2 m/s: braking may carry it a few mm past the edge,
    # and the new target is pulled back inside.
    [resumed] = run(controller, [DeltaCommand.of((0.0, 0.005, 0), (0, 0, 0), 0.0)])
    assert resumed.target is not None
    expected = np.clip(held + np.array([0, 0.005, 0]), LIMITS.workspace_min, LIMITS.workspace_max)
    np.testing.assert_allclose(resumed.target.position, expected, atol=0.003)


def test_estop_stops_the_arm_and_latches_until_cleared(controller: ArmController) -> None:
    connected(controller)
    run(controller, [DeltaCommand.of((0.01, 0, 0), (0, 0, 0), 0.0)] * 5)
    controller.engage_estop("test")
    stopped = run(controller, [DeltaCommand.of((0.01, 0, 0), (0, 0, 0), 0.0)] * 20)
    assert {r.mode for r in stopped} == {ArmMode.ESTOP}
    assert "e-stop: holding" in stopped[0].events
    # The arm comes to rest even though commands keep arriving.
    assert np.linalg.norm(position(stopped[-1]) - position(stopped[-5])) < 0.001
    assert controller.clear_estop() == (True, "e-stop cleared")
    [resumed] = run(controller, [DeltaCommand.of((0.01, 0, 0), (0, 0, 0), 0.0)])
    assert resumed.mode is ArmMode.MOVING


def test_killing_the_simulator_stops_commanding_and_reconnects_when_it_returns(sim: Watched) -> None:
    ctrl = ArmController(FrankyBackend(CONFIG), LIMITS, reconnect_interval=0.5)
    try:
        connected(ctrl)
        rate = RateKeeper(20.0)
        run(ctrl, [DeltaCommand.of((0.005, 0, 0), (0, 0, 0), 0.0)] * 10, rate)
        sim.kill()  # SIGKILL mid-motion: the robot vanished from the network
        reports = run(ctrl, [DeltaCommand.of((0.005, 0, 0), (0, 0, 0), 0.0)] * 30, rate)
        lost = next(i for i, r in enumerate(reports) if r.mode is ArmMode.DISCONNECTED)
        assert all(r.mode is ArmMode.DISCONNECTED for r in reports[lost:])
        assert "UDP receive: Timeout" in reports[lost].error or "TCP" in reports[lost].error
        assert any(e.startswith("connection lost") for e in reports[lost].events)
        assert ctrl.clear_estop()[0]  # nothing latched; clearing is a no-op
        assert ctrl.counters["connection_losses"] == 1

        revived = start_franky_sim(HOST)
        try:
            back = run(ctrl, [None] * 30, rate)
            assert any("connected" in r.events for r in back)
            assert back[-1].mode is ArmMode.IDLE
            moving = run(ctrl, [DeltaCommand.of((0.0, 0.005, 0), (0, 0, 0), 0.0)] * 5, rate)
            assert moving[-1].mode is ArmMode.MOVING
            assert ctrl.counters["connects"] == 2
        finally:
            revived.kill()
    finally:
        ctrl.close()


def test_the_robot_clock_is_the_simulators_and_a_loop_paced_by_it_outlives_the_simulator(
    sim: Watched,
) -> None:
    backend = FrankyBackend(CONFIG)
    assert backend.robot_time() is None  # not connected: no clock to read
    ctrl = ArmController(backend, LIMITS, reconnect_interval=0.5)
    try:
        connected(ctrl)
        clock = RobotClock(backend.robot_time)
        rate = RateKeeper(20.0, clock=clock.now, sleep=clock.sleep)
        first = backend.robot_time()
        wall = time.monotonic()
        starts = [rate.wait() for _ in range(10)]
        robot_elapsed = backend.robot_time() - first  # type: ignore[operator]
        # Ten ticks are 0.45 s of the simulator's clock, however fast its physics runs here.
        assert starts[-1] - starts[0] == pytest.approx(0.45, abs=0.01)
        assert 0.4 < robot_elapsed < 0.6
        assert time.monotonic() - wall >= robot_elapsed - 0.01  # franky-sim never outruns real time
        sim.kill()
        reports = run(ctrl, [None] * 10, rate)
        assert reports[-1].mode is ArmMode.DISCONNECTED
        assert backend.robot_time() is None
        before = rate.wait()
        assert rate.wait() - before == pytest.approx(0.05, abs=0.02)  # ticking on wall time now
    finally:
        ctrl.close()


def test_connecting_to_nothing_reports_disconnected_and_retries_on_schedule() -> None:
    ctrl = ArmController(
        FrankyBackend(CONFIG.model_copy(update={"host": "127.0.0.12"})), LIMITS, reconnect_interval=10.0
    )
    first = ctrl.tick(None, now=0.0)
    assert first.mode is ArmMode.DISCONNECTED
    assert "cannot connect to 127.0.0.12" in first.error
    assert first.events and first.events[0].startswith("connect failed")
    # Within the interval nothing is retried, and the same error is not logged again.
    assert ctrl.tick(None, now=1.0).events == []


def test_losing_the_robot_while_the_hand_moves_never_freezes_the_driver(sim: Watched) -> None:
    # libfranka gives up on a hand command to a vanished robot only after ~60 s; the driver must
    # neither wait for that nor let a Python thread wait for it (a destructor holding the GIL).
    ctrl = ArmController(FrankyBackend(CONFIG), LIMITS, reconnect_interval=0.5)
    try:
        connected(ctrl)
        rate = RateKeeper(20.0)
        run(ctrl, [DeltaCommand.of((0.0, 0, 0), (0, 0, 0), 1.0)] * 3, rate)  # start closing the hand
        sim.kill()
        start = time.monotonic()
        reports = run(ctrl, [DeltaCommand.of((0.0, 0, 0), (0, 0, 0), 1.0)] * 10, rate)
        assert reports[-1].mode is ArmMode.DISCONNECTED
        ctrl.close()
        assert time.monotonic() - start < 5.0
    finally:
        ctrl.close()


@pytest.mark.parametrize(
    ("closure", "closed", "measured", "busy", "expected"),
    [
        (1.0, None, 0.0, False, True),  # the first close is sent
        (0.0, True, 1.0, True, False),  # a change is sent even while a command runs
        (0.5, True, 0.4, False, None),  # between the thresholds: keep what was asked
        (0.0, False, 1.0, True, None),  # the open command is still running
        (0.0, False, 1.0, False, False),  # idle and still closed: the open command failed, resend
        (0.0, False, 0.05, False, None),  # open enough
        (1.0, True, 0.4, False, None),  # closed on an object: holding, not a miss
        (1.0, True, 0.0, False, True),  # idle and still wide open: the grasp failed, resend
    ],
)
def test_a_hand_command_that_did_not_happen_is_sent_again(
    closure: float, closed: bool | None, measured: float, busy: bool, expected: bool | None
) -> None:
    assert hand_request(closure, closed, measured, busy) is expected


def wait_idle(hand: _Hand, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while hand.busy and time.monotonic() < end:
        time.sleep(0.02)
    return not hand.busy


def unanswered_hand_command(host: str) -> None:
    """The scenario of the test below, run in a process of its own: once the simulator is gone,
    libfranka spins a core for a minute in the command left behind, so that process is killed
    before the simulator is."""
    gripper = franky.Gripper(host)
    hand = _Hand(gripper, CONFIG.model_copy(update={"host": host, "gripper_timeout": 1.5}))
    hand.request(True, 0.0)
    time.sleep(0.2)
    # A second command on the connection replaces the grasp in franky-sim, which then never
    # answers it: the worker would wait for good.
    threading.Thread(target=gripper.move, args=(0.08, 0.05), daemon=True).start()
    seen: dict[str, object] = {"queued": hand.busy, "idle": wait_idle(hand, 10.0), "given_up": hand.abandoned}
    # The hand still obeys: a grasp closes it, an open opens it.
    hand.request(True, 0.0)
    seen["closed"] = wait_idle(hand, 10.0) and hand.state()[0] < 0.01
    hand.request(False, 0.08)
    seen["opened"] = wait_idle(hand, 10.0) and hand.state()[0] > 0.07
    seen["given_up_in_all"] = hand.abandoned
    print("SEEN " + json.dumps(seen), flush=True)
    time.sleep(120.0)  # until killed


def test_a_hand_command_franky_sim_never_answers_is_given_up_and_the_hand_works_on(sim: Watched) -> None:
    scenario = f"from {__name__} import unanswered_hand_command; unanswered_hand_command({HOST!r})"
    child = Watched([sys.executable, "-c", scenario])
    try:
        seen = json.loads(child.wait_for(r"^SEEN (.*)$", timeout=60.0).group(1))
    finally:
        child.kill()
    assert seen == {
        "queued": True,
        "idle": True,
        "given_up": 1,
        "closed": True,
        "opened": True,
        "given_up_in_all": 1,
    }, child.output
