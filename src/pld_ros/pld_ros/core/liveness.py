"""Which sources are alive, from the times their heartbeats arrived."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class SourceState:
    alive: bool
    age: float | None
    """Seconds since the last beat; None if never seen."""

    def describe(self) -> str:
        if self.age is None:
            return "never seen"
        return "alive" if self.alive else f"stale for {self.age:.1f} s"


class Liveness:
    """Heartbeat bookkeeping; times are seconds on any monotonic clock the caller chooses."""

    def __init__(self, stale_after: float, expected: Iterable[str] = ()) -> None:
        if stale_after <= 0.0:
            raise ValueError(f"stale_after must be positive, got {stale_after}")
        self._stale_after = stale_after
        self._last: dict[str, float | None] = dict.fromkeys(expected)
        self._reported_stale: set[str] = set()

    def beat(self, source: str, now: float) -> bool:
        """Record a beat; True when the source was unknown, never seen or stale before it."""
        previous = self._last.get(source)
        revived = previous is None or now - previous > self._stale_after
        self._last[source] = now
        self._reported_stale.discard(source)
        return revived

    def states(self, now: float) -> list[tuple[str, SourceState]]:
        result = []
        for source, last in sorted(self._last.items()):
            age = None if last is None else now - last
            result.append((source, SourceState(alive=age is not None and age <= self._stale_after, age=age)))
        return result

    def newly_stale(self, now: float) -> list[str]:
        """Sources that were seen and went stale since the last call (each reported once)."""
        stale = [s for s, st in self.states(now) if st.age is not None and not st.alive]
        fresh = [s for s in stale if s not in self._reported_stale]
        self._reported_stale.update(fresh)
        return fresh
