from __future__ import annotations

import pytest

from pld_ros.core.rate import RateKeeper


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


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateKeeper(0.0)
