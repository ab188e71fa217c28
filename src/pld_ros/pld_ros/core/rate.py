"""A fixed-rate loop that sleeps to absolute deadlines and accounts for every late tick.

Sleeping a fixed period after each tick accumulates the tick's own duration as drift; sleeping
until ``start + n * period`` does not. A tick that starts more than half a period late counts as
missed and the schedule re-anchors, so one stall does not make the loop race to catch up.

:class:`RobotClock` lets the same loop keep time by the robot's own clock instead of the
machine's: a simulator that cannot keep real time slows the loop with it, so a policy sees the
same 50 ms of physics per tick that it was trained on.

:class:`TickTiming` is the same accounting for a loop that something else paces (a node ticked
by each arm state or base action it receives): how often it ran, how long each tick took, and how
many ticks overran their deadline. Nodes report both on /diagnostics.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class RobotClock:
    """A continuous clock that advances with the robot's clock and with wall time without one.

    ``source`` returns the robot's time in seconds, or None while it is unknown (disconnected).
    While the source is unknown or jumps back (a restarted simulator starts again at 0), the clock
    advances by wall time instead, so it never stops nor runs backwards and a loop paced by it
    keeps ticking through a lost connection.
    """

    def __init__(
        self,
        source: Callable[[], float | None],
        *,
        wall: Callable[[], float] = time.monotonic,
        wall_sleep: Callable[[float], None] = time.sleep,
        poll: float = 0.001,
        max_slowdown: float = 4.0,
    ) -> None:
        """``poll``: s between two reads of the source once the wall-clock part of a sleep is over.
        ``max_slowdown``: a sleep gives up after this many times its duration in wall time, so a
        frozen source (a simulator stalled without dropping the link) cannot stall the loop."""
        self._source = source
        self._wall = wall
        self._wall_sleep = wall_sleep
        self._poll = poll
        self._max_slowdown = max_slowdown
        self._value = 0.0
        self._last_source: float | None = None
        self._last_wall = wall()

    def now(self) -> float:
        source, wall = self._source(), self._wall()
        if source is not None and self._last_source is not None and source >= self._last_source:
            self._value += source - self._last_source
        else:
            self._value += wall - self._last_wall
        self._last_source, self._last_wall = source, wall
        return self._value

    def sleep(self, duration: float) -> None:
        """Return once the clock has advanced by ``duration`` (or after the wall-time cap)."""
        target = self.now() + duration
        give_up = self._wall() + self._max_slowdown * duration
        # The robot's clock never runs ahead of wall time (a simulator is paced to at most real
        # time), so the first ``duration`` of wall time can pass without reading the source.
        self._wall_sleep(duration)
        while self.now() < target and self._wall() < give_up:
            self._wall_sleep(self._poll)


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

    def restart(self) -> None:
        """Start a fresh schedule at the next :meth:`wait`: the loop paused on purpose (a blocking
        joint move), which is neither missed ticks nor a long period."""
        self._next = None
        self._last_start = None

    def stats(self) -> RateStats:
        periods = _Spread.of(self._periods, self.period)
        return RateStats(
            ticks=self.ticks,
            missed=self.missed,
            period_mean=periods.mean,
            period_p50=periods.p50,
            period_p99=periods.p99,
            period_max=periods.max,
        )


@dataclass(frozen=True)
class _Spread:
    mean: float
    p50: float
    p99: float
    max: float

    @staticmethod
    def of(values: deque[float], default: float) -> _Spread:
        """Mean, median, 99th percentile and maximum of ``values`` (``default`` when empty)."""
        # A tuple copy is taken in one step: another thread may be appending (a loop thread
        # records while the diagnostics timer reads).
        copied = tuple(values)
        array = np.asarray(copied) if copied else np.asarray([default])
        return _Spread(
            mean=float(array.mean()),
            p50=float(np.percentile(array, 50)),
            p99=float(np.percentile(array, 99)),
            max=float(array.max()),
        )


@dataclass(frozen=True)
class TickTimingStats:
    """A loop's timing over the recent window; periods and latencies in s, NaN before enough ticks."""

    ticks: int
    """Ticks since the start."""
    deadline_misses: int
    """Ticks since the start whose work took longer than the deadline."""
    rate_hz: float
    """Ticks per second: the inverse of the mean period."""
    period_p50: float
    period_p99: float
    period_max: float
    latency_p50: float
    """Time from a tick's start to the end of its work."""
    latency_p99: float
    latency_max: float

    def values(self) -> dict[str, str]:
        """The /diagnostics key-values every paced node reports (docs/topics.md), times in ms."""
        return {
            "loop_ticks": str(self.ticks),
            "loop_rate_hz": f"{self.rate_hz:.2f}",
            "loop_period_p50_ms": f"{self.period_p50 * 1e3:.2f}",
            "loop_period_p99_ms": f"{self.period_p99 * 1e3:.2f}",
            "loop_period_max_ms": f"{self.period_max * 1e3:.2f}",
            "tick_latency_p50_ms": f"{self.latency_p50 * 1e3:.2f}",
            "tick_latency_p99_ms": f"{self.latency_p99 * 1e3:.2f}",
            "tick_latency_max_ms": f"{self.latency_max * 1e3:.2f}",
            "deadline_misses": str(self.deadline_misses),
        }


class TickTiming:
    """Timing of a loop paced from outside; call :meth:`record` once per tick.

    ``deadline``: s a tick's work may take (the control period for a node in the control loop: a
    slower tick delays the arm's next command). ``window``: how many recent ticks the periods and
    latencies cover (1200 = one minute at 20 Hz); the counts cover the whole run.
    """

    def __init__(self, deadline: float, *, window: int = 1200) -> None:
        if deadline <= 0.0:
            raise ValueError(f"deadline must be positive, got {deadline}")
        self.deadline = deadline
        self._periods: deque[float] = deque(maxlen=window)
        self._latencies: deque[float] = deque(maxlen=window)
        self._last_start: float | None = None
        self.ticks = 0
        self.deadline_misses = 0

    def record(self, start: float, latency: float) -> None:
        """One tick that started at ``start`` (s, on the loop's clock) and whose work took
        ``latency`` s (wall time: a loop paced by a slow simulator's clock still computes in
        wall time)."""
        if self._last_start is not None:
            self._periods.append(start - self._last_start)
        self._last_start = start
        self._latencies.append(latency)
        self.ticks += 1
        if latency > self.deadline:
            self.deadline_misses += 1

    def restart(self) -> None:
        """The next :meth:`record` starts a fresh period count (after a deliberate pause)."""
        self._last_start = None

    def stats(self) -> TickTimingStats:
        periods = _Spread.of(self._periods, math.nan)
        latencies = _Spread.of(self._latencies, math.nan)
        return TickTimingStats(
            ticks=self.ticks,
            deadline_misses=self.deadline_misses,
            rate_hz=1.0 / periods.mean if periods.mean > 0.0 else math.nan,
            period_p50=periods.p50,
            period_p99=periods.p99,
            period_max=periods.max,
            latency_p50=latencies.p50,
            latency_p99=latencies.p99,
            latency_max=latencies.max,
        )
