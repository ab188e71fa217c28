"""A fixed-rate loop that sleeps to absolute deadlines and accounts for every late tick.

Sleeping a fixed period after each tick accumulates the tick's own duration as drift; sleeping
until ``start + n * period`` does not. A tick that starts more than half a period late counts as
missed and the schedule re-anchors, so one stall does not make the loop race to catch up.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RateStats:
    ticks: int
    missed: int
    period_mean: float
    period_p50: float
    period_p99: float
    period_max: float


class RateKeeper:
    def __init__(
        self,
        rate_hz: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        window: int = 1200,
    ) -> None:
        """``window``: how many recent periods the statistics cover (1200 = one minute at 20 Hz)."""
        if rate_hz <= 0.0:
            raise ValueError(f"rate must be positive, got {rate_hz}")
        self.period = 1.0 / rate_hz
        self._clock = clock
        self._sleep = sleep
        self._next: float | None = None
        self._last_start: float | None = None
        self._periods: deque[float] = deque(maxlen=window)
        self.ticks = 0
        self.missed = 0

    def wait(self) -> float:
        """Sleep until the next tick is due; return its start time."""
        now = self._clock()
        if self._next is None:
            self._next = now
        elif now < self._next:
            self._sleep(self._next - now)
            now = self._clock()
        lateness = now - self._next
        if lateness > 0.5 * self.period:
            self.missed += int(lateness / self.period + 0.5)
            self._next = now
        if self._last_start is not None:
            self._periods.append(now - self._last_start)
        self._last_start = now
        self._next += self.period
        self.ticks += 1
        return now

    def stats(self) -> RateStats:
        periods = np.asarray(self._periods) if self._periods else np.asarray([self.period])
        return RateStats(
            ticks=self.ticks,
            missed=self.missed,
            period_mean=float(periods.mean()),
            period_p50=float(np.percentile(periods, 50)),
            period_p99=float(np.percentile(periods, 99)),
            period_max=float(periods.max()),
        )
