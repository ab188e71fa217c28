from __future__ import annotations

import math

import pytest

from pld_ros.core.rate import RateKeeper, RobotClock, TickTiming


class FakeClock:
    """Simulated time, so deadlines and lateness are exact."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_sleeps_to_absolute_deadlines_so_work_does_not_drift() -> None:
    clock = FakeClock()
    rate = RateKeeper(20.0, clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(5):
        starts.append(rate.wait())
        clock.now += 0.013  # the tick's own work
    assert starts == pytest.approx([100.0, 100.05, 100.10, 100.15, 100.20])
    assert clock.slept == pytest.approx([0.037] * 4)
    assert rate.missed == 0


def test_a_stall_counts_missed_ticks_and_reanchors() -> None:
    clock = FakeClock()
    rate = RateKeeper(20.0, clock=clock, sleep=clock.sleep)
    rate.wait()
    clock.now += 0.175  # stall: the ticks due at +0.05, +0.10, +0.15 could not start on time
    start = rate.wait()
    assert start == pytest.approx(100.175)
    assert rate.missed == 3
    clock.now += 0.01
    assert rate.wait() == pytest.approx(100.225)
    stats = rate.stats()
    assert stats.ticks == 3 and stats.missed == 3
    assert stats.period_max == pytest.approx(0.175)


def test_a_restart_after_a_deliberate_pause_counts_no_missed_ticks() -> None:
    clock = FakeClock()
    rate = RateKeeper(20.0, clock=clock, sleep=clock.sleep)
    timing = TickTiming(0.05)
    timing.record(rate.wait(), 0.001)
    clock.now += 3.0  # a blocking joint move
    rate.restart()
    timing.restart()
    start = rate.wait()
    timing.record(start, 0.001)
    assert start == pytest.approx(103.0)
    # The schedule goes on from the restart, and no period spans the pause.
    clock.now += 0.01
    timing.record(rate.wait(), 0.001)
    assert rate.missed == 0
    assert rate.stats().period_max == pytest.approx(0.05)
    assert timing.stats().period_max == pytest.approx(0.05)


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateKeeper(0.0)


class SlowRobot:
    """A robot clock that advances at ``factor`` times wall time, as a slow simulator does."""

    def __init__(self, wall: FakeClock, factor: float) -> None:
        self.wall = wall
        self.factor = factor
        self.connected = True
        self.offset = 5.0  # robot time at wall 100.0
        self.frozen_at: float | None = None

    def __call__(self) -> float | None:
        if not self.connected:
            return None
        if self.frozen_at is not None:
            return self.frozen_at
        return self.offset + (self.wall.now - 100.0) * self.factor


def test_robot_clock_paces_a_loop_by_the_robot_time() -> None:
    wall = FakeClock()
    robot = SlowRobot(wall, factor=0.5)
    clock = RobotClock(robot, wall=wall, wall_sleep=wall.sleep, poll=0.001)
    rate = RateKeeper(20.0, clock=clock.now, sleep=clock.sleep)
    starts = [rate.wait() for _ in range(5)]
    # 50 ms of robot time per tick takes 100 ms of wall time on a half-speed simulator.
    assert starts[-1] - starts[0] == pytest.approx(0.2, abs=0.002)
    assert wall.now - 100.0 == pytest.approx(0.4, abs=0.005)
    assert rate.missed == 0


def test_robot_clock_runs_on_wall_time_while_the_robot_is_gone_and_never_goes_back() -> None:
    wall = FakeClock()
    robot = SlowRobot(wall, factor=1.0)
    clock = RobotClock(robot, wall=wall, wall_sleep=wall.sleep)
    first = clock.now()
    wall.now += 0.3
    robot.connected = False
    during = clock.now()
    assert during - first == pytest.approx(0.3)
    wall.now += 0.2
    robot.connected, robot.offset = True, 0.0  # a restarted simulator starts its clock at 0
    after = clock.now()
    assert after - during == pytest.approx(0.2)
    wall.now += 0.1
    assert clock.now() - after == pytest.approx(0.1)


def test_a_frozen_robot_clock_cannot_stall_the_loop() -> None:
    wall = FakeClock()
    robot = SlowRobot(wall, factor=1.0)
    clock = RobotClock(robot, wall=wall, wall_sleep=wall.sleep, max_slowdown=4.0)
    clock.now()
    robot.frozen_at = 5.0
    clock.sleep(0.05)
    assert wall.now - 100.0 == pytest.approx(0.2, abs=0.002)


def test_tick_timing_reports_rate_periods_latencies_and_deadline_misses() -> None:
    timing = TickTiming(deadline=0.05, window=100)
    assert timing.stats().ticks == 0 and math.isnan(timing.stats().rate_hz)
    starts = [10.0, 10.05, 10.10, 10.20, 10.25]  # one tick came a period late
    latencies = [0.002, 0.004, 0.08, 0.003, 0.006]  # one tick overran its 50 ms
    for start, latency in zip(starts, latencies, strict=True):
        timing.record(start, latency)
    stats = timing.stats()
    assert stats.ticks == 5 and stats.deadline_misses == 1
    assert stats.rate_hz == pytest.approx(4 / 0.25)
    assert stats.period_p50 == pytest.approx(0.05) and stats.period_max == pytest.approx(0.10)
    assert stats.latency_p50 == pytest.approx(0.004) and stats.latency_max == pytest.approx(0.08)
    values = stats.values()
    assert values["loop_ticks"] == "5" and values["deadline_misses"] == "1"
    assert values["loop_period_max_ms"] == "100.00" and values["tick_latency_max_ms"] == "80.00"
    assert values["loop_rate_hz"] == "16.00"


def test_tick_timing_statistics_cover_the_recent_window_and_counts_the_whole_run() -> None:
    timing = TickTiming(deadline=0.01, window=3)
    for tick in range(10):
        timing.record(float(tick), 0.5 if tick < 5 else 0.001)  # slow at first, then fast
    stats = timing.stats()
    assert stats.ticks == 10 and stats.deadline_misses == 5
    assert stats.latency_max == pytest.approx(0.001)  # the slow ticks left the window


def test_tick_timing_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        TickTiming(0.0)
