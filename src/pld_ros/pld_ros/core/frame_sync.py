"""Match the frames of several cameras (wrist, side) taken at nearly the same time, for the policy.

Each camera streams on its own clock phase, so the newest frames of two cameras can be up to a
frame period apart. :class:`FrameSync` keeps a few recent frames per camera and returns the newest
set whose capture times lie within a tolerance of each other, or says why there is none: a camera
that is stale (or never delivered), or fresh cameras whose frames never line up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class SyncedSet(Generic[T]):
    """One frame per camera, all captured within the tolerance of each other."""

    items: Mapping[str, T]
    """Frames by camera name."""
    timestamps: Mapping[str, float]
    """Capture time of each frame, s."""

    @property
    def stamp(self) -> float:
        """Capture time of the set: that of its oldest frame (nothing in it is older)."""
        return min(self.timestamps.values())

    @property
    def skew(self) -> float:
        """Seconds between the oldest and the newest frame of the set."""
        return max(self.timestamps.values()) - self.stamp


@dataclass(frozen=True)
class NoSet:
    """Why no set can be given now."""

    reason: str
    stale: tuple[str, ...] = ()
    """Cameras whose newest frame is older than ``stale_after``, or that never delivered one."""
    skew: float | None = None
    """Seconds between the cameras' newest frames, when every camera has one."""


class FrameSync(Generic[T]):
    """Sets of frames from ``cameras``; timestamps and ``now`` are seconds on one clock.

    A set is only given when every camera is fresh (its newest frame at most ``stale_after``
    old) and the set itself is: a stale camera never lets an old view through to the policy.
    """

    def __init__(
        self, cameras: Sequence[str], tolerance: float, stale_after: float, history: int = 8
    ) -> None:
        if not cameras or len(set(cameras)) != len(cameras):
            raise ValueError(f"cameras must be distinct names, got {list(cameras)}")
        if tolerance < 0.0 or stale_after <= 0.0 or history < 1:
            raise ValueError(
                "need tolerance >= 0, stale_after > 0 and history >= 1, "
                f"got {tolerance}, {stale_after}, {history}"
            )
        self.tolerance = tolerance
        self.stale_after = stale_after
        self._frames: dict[str, deque[tuple[float, T]]] = {name: deque(maxlen=history) for name in cameras}

    def add(self, camera: str, timestamp: float, item: T) -> bool:
        """Keep a frame; False (and dropped) when it is not newer than the camera's last one."""
        frames = self._frames[camera]
        if frames and timestamp <= frames[-1][0]:
            return False
        frames.append((timestamp, item))
        return True

    def newest(self, now: float) -> SyncedSet[T] | NoSet:
        """The newest set of fresh frames within the tolerance, or why there is none."""
        latest = {name: frames[-1][0] for name, frames in self._frames.items() if frames}
        stale = tuple(
            name for name in self._frames if name not in latest or now - latest[name] > self.stale_after
        )
        skew = max(latest.values()) - min(latest.values()) if len(latest) == len(self._frames) else None
        if stale:
            return NoSet(f"stale: {', '.join(stale)}", stale=stale, skew=skew)
        # Try each frame as the oldest of a set, newest first: the first set that closes is the
        # newest one. Every camera contributes its earliest frame in [anchor, anchor + tolerance]
        # (the anchor's own camera: the anchor itself), which keeps the skew smallest.
        anchors = sorted((t for frames in self._frames.values() for t, _ in frames), reverse=True)
        for anchor in anchors:
            if now - anchor > self.stale_after:
                break
            chosen: dict[str, tuple[float, T]] = {}
            for name, frames in self._frames.items():
                fits = [f for f in frames if anchor <= f[0] <= anchor + self.tolerance]
                if not fits:
                    break
                chosen[name] = fits[0]
            else:
                return SyncedSet(
                    items={name: item for name, (_, item) in chosen.items()},
                    timestamps={name: t for name, (t, _) in chosen.items()},
                )
        return NoSet(
            f"no fresh frames within {self.tolerance * 1000:.0f} ms of each other", stale=(), skew=skew
        )
