"""Robot episodes as supervised fine-tuning (SFT) data, without ROS: the one episode type that every
dataset writer takes and every reader gives back, the alignment of streams recorded at different
rates onto the control-rate grid, and converters from the project's own episode types.

An :class:`SftEpisode` has ``T`` frames, one per control tick. Frame ``t`` holds:

- ``cameras[name][t]``: that camera's ``H x W x 3`` uint8 RGB image (any size; one size per
  camera within an episode);
- ``state[t]``: the robot state (proprioception), ``S`` float32 values;
- ``action[t]``: the action executed from that frame (the command sent to the arm), ``A`` values;
- the base/residual split of that action: ``base_action[t]`` (what the base policy proposed) and
  ``residual[t]``, what was added on top of it in action space, so that
  ``action = base_action + residual`` (within float32 rounding). The residual is zero where the
  base policy acted alone, and for demonstrations that had no base policy (then the base action is
  the executed one). Note that this is not the residual actor's normalized output ``r``: a
  :class:`~pld_ros.learning.episode_store.RecordedEpisode` stores ``r``, and its converter here
  turns it into ``executed - base``.
- ``timestamps[t]``: when the frame was taken, s, on the recording's clock (e.g. ROS time).

Per episode: the task (the language prompt), whether it succeeded, and :class:`EpisodeInfo` (robot,
origin of the data: base policy, PLD, expert, human, ...).

Streams recorded at their own rates (cameras at 30 Hz, state at 20 Hz, each with its own stamps)
become frames with :func:`resample`: every grid time takes each stream's newest sample at or before
it, never a later one (a policy acting at that tick could not have seen a later sample).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from pld_ros.core.episode import Outcome, RunMode
from pld_ros.core.observation import Float32Array
from pld_ros.learning.episode_store import RecordedEpisode

if TYPE_CHECKING:  # the rollouts module imports the simulator and the arm driver
    from pld_ros.training.rollouts import Episode

Float64Array = npt.NDArray[np.float64]

STATE_NAMES = ("x", "y", "z", "qx", "qy", "qz", "qw", "gripper")
"""The project's proprioception (:mod:`pld_ros.core.observation`), value by value."""
ACTION_NAMES = ("tx", "ty", "tz", "rx", "ry", "rz", "gripper")
"""The project's delta-pose action (:mod:`pld_ros.core.observation`), value by value."""

SPLIT_TOLERANCE = 1e-5
"""Largest ``|action - (base_action + residual)|``, absolute plus the same relative to
``|action|``: float32 rounding of ``base + (executed - base)`` stays far below it, a base/residual
pair that does not add up to the executed action does not."""
RATE_TOLERANCE = 0.5
"""Frame intervals may deviate from ``1 / fps`` by this fraction of it (control-loop jitter); a
missed tick (twice the period) or a doubled frame (no interval) is an error."""

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # safe as a LeRobot feature and an HDF5 key


class EpisodeRejected(ValueError):
    """A dataset writer refused an episode before writing any of it (it does not fit the dataset:
    other cameras, sizes, dimensions or rate); the dataset is as it was and takes further episodes."""


class Origin(str, Enum):
    """Who produced an episode's actions."""

    BASE = "base"
    """The base policy alone (warm-up or baseline episodes)."""
    PLD = "pld"
    """PLD's hybrid rollouts: base policy probing, then the residual's takeover."""
    RESIDUAL = "residual"
    """The residual specialist from the first step."""
    EXPERT = "expert"
    """A scripted expert (a simulator's demonstrations)."""
    HUMAN = "human"
    """Teleoperated demonstrations."""


@dataclass(frozen=True)
class EpisodeInfo:
    """Where an episode comes from."""

    robot_id: str
    """The profile's ``robot_id`` (or any name of the robot that recorded it)."""
    origin: Origin
    episode_id: int
    """The id the episode had where it was recorded (unique per robot and run)."""
    extra: Mapping[str, str] = field(default_factory=dict)
    """Anything else worth keeping (run id, policy versions, seed, ...), carried into the datasets."""

    def __post_init__(self) -> None:
        if not self.robot_id:
            raise ValueError("robot_id must not be empty")
        if self.episode_id < 0:
            raise ValueError(f"episode_id must not be negative, got {self.episode_id}")


@dataclass(frozen=True, eq=False)
class SftEpisode:
    """One episode of ``T >= 1`` frames (layout: module doc). Checked on construction; compared by
    identity (its arrays have no single truth value)."""

    task: str
    """The language prompt."""
    cameras: Mapping[str, npt.NDArray[np.uint8]]
    """``[T, H, W, 3]`` RGB per camera name (letters, digits, ``_``)."""
    state: Float32Array
    """``[T, S]``."""
    action: Float32Array
    """``[T, A]`` executed actions."""
    base_action: Float32Array
    """``[T, A]``."""
    residual: Float32Array
    """``[T, A]``, ``action - base_action``."""
    timestamps: Float64Array
    """``[T]`` s, strictly increasing."""
    success: bool
    info: EpisodeInfo
    state_names: tuple[str, ...] = ()
    """Name of each state value; empty when unnamed."""
    action_names: tuple[str, ...] = ()
    """Name of each action value; empty when unnamed."""

    def __post_init__(self) -> None:
        frames = len(self.timestamps)
        if frames < 1:
            raise ValueError("an episode needs at least one frame")
        if not self.task.strip():
            raise ValueError("task (the language prompt) must not be empty")
        times = self.timestamps
        if times.dtype != np.float64 or times.shape != (frames,):
            raise ValueError(f"timestamps: expected float64 ({frames},), got {times.dtype} {times.shape}")
        if not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0.0):
            raise ValueError("timestamps must be finite and strictly increasing")
        for name in ("state", "action", "base_action", "residual"):
            array = getattr(self, name)
            if array.dtype != np.float32 or array.ndim != 2 or array.shape[0] != frames:
                raise ValueError(
                    f"{name}: expected float32 ({frames}, N) for {frames} timestamps, "
                    f"got {array.dtype} {array.shape}"
                )
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{name} holds NaN or infinite values")
        action_dim = self.action.shape[1]
        for name in ("base_action", "residual"):
            if getattr(self, name).shape[1] != action_dim:
                raise ValueError(f"{name} has {getattr(self, name).shape[1]} values, action {action_dim}")
        split = self.base_action + self.residual
        if not np.allclose(split, self.action, rtol=SPLIT_TOLERANCE, atol=SPLIT_TOLERANCE):
            worst = int(np.argmax(np.max(np.abs(split - self.action), axis=1)))
            raise ValueError(f"base_action + residual differs from action at frame {worst}")
        for names, dim, what in (
            (self.state_names, self.state.shape[1], "state_names"),
            (self.action_names, action_dim, "action_names"),
        ):
            if names and len(names) != dim:
                raise ValueError(f"{what}: {len(names)} names for {dim} values")
        for camera, images in self.cameras.items():
            if not _NAME.fullmatch(camera):
                raise ValueError(f"camera name {camera!r}: letters, digits and _, starting with a letter")
            shape = images.shape
            if images.dtype != np.uint8 or images.ndim != 4 or shape[0] != frames or shape[3] != 3:
                raise ValueError(
                    f"camera {camera}: expected uint8 ({frames}, H, W, 3), got {images.dtype} {images.shape}"
                )

    def __len__(self) -> int:
        return len(self.timestamps)

    def check_rate(self, fps: float) -> None:
        """Raise :class:`EpisodeRejected` unless consecutive frames are ``1 / fps`` apart (within
        :data:`RATE_TOLERANCE`): a dataset's frames are its control ticks at one rate."""
        period = 1.0 / fps
        intervals = np.diff(self.timestamps)
        bad = np.flatnonzero(np.abs(intervals - period) > RATE_TOLERANCE * period)
        if len(bad):
            frame = int(bad[0]) + 1
            raise EpisodeRejected(
                f"frame {frame} is {intervals[bad[0]] * 1e3:.1f} ms after frame {frame - 1}, expected "
                f"{period * 1e3:.1f} ms at {fps:g} fps (resample the streams onto the control rate)"
            )


@dataclass(frozen=True)
class Layout:
    """What all episodes of one dataset share; the first episode written sets it."""

    cameras: tuple[tuple[str, int, int], ...]
    """``(name, height, width)`` per camera, in the episode's order."""
    state_dim: int
    action_dim: int
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]

    @staticmethod
    def of(episode: SftEpisode) -> Layout:
        return Layout(
            cameras=tuple((name, int(v.shape[1]), int(v.shape[2])) for name, v in episode.cameras.items()),
            state_dim=int(episode.state.shape[1]),
            action_dim=int(episode.action.shape[1]),
            state_names=episode.state_names,
            action_names=episode.action_names,
        )

    def check(self, episode: SftEpisode) -> None:
        """Raise :class:`EpisodeRejected` naming the first way ``episode`` differs."""
        other = Layout.of(episode)
        for field_name in ("cameras", "state_dim", "action_dim", "state_names", "action_names"):
            mine, theirs = getattr(self, field_name), getattr(other, field_name)
            if mine != theirs:
                raise EpisodeRejected(f"{field_name} {theirs} differ from the dataset's {mine}")


# ---- aligning streams ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Stream:
    """Samples of one signal in time order: ``values[i]`` was taken at ``timestamps[i]`` (s)."""

    timestamps: Float64Array
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.timestamps.ndim != 1 or len(self.values) != len(self.timestamps):
            raise ValueError(
                f"{len(self.values)} values for {len(self.timestamps)} timestamps "
                f"(timestamps must be one-dimensional)"
            )
        if not np.all(np.isfinite(self.timestamps)) or np.any(np.diff(self.timestamps) < 0.0):
            raise ValueError("timestamps must be finite and in time order")


@dataclass(frozen=True)
class MissingSample:
    """A grid time at which a stream had no usable sample, so that frame was left out."""

    time: float
    stream: str
    reason: str


@dataclass(frozen=True, eq=False)
class Resampled:
    """Streams on a common grid: frame ``k`` at ``timestamps[k]`` holds each stream's newest sample
    taken at or before it."""

    timestamps: Float64Array
    """``[K]`` grid times of the frames kept, s."""
    values: dict[str, np.ndarray]
    """``[K, ...]`` per stream."""
    sample_times: dict[str, Float64Array]
    """``[K]`` per stream: when the sample used for each frame was taken (never after the frame)."""
    missing: tuple[MissingSample, ...]
    """Why frames were left out: one entry per grid time and stream without a usable sample."""

    @property
    def skipped_times(self) -> list[float]:
        """The grid times left out, in order."""
        return sorted({entry.time for entry in self.missing})


def resample(
    streams: Mapping[str, Stream],
    fps: float,
    *,
    start: float | None = None,
    stop: float | None = None,
    max_age: float | None = None,
) -> Resampled:
    """Align ``streams`` onto the grid ``start + k / fps`` up to ``stop`` (inclusive).

    Each grid time takes every stream's newest sample stamped at or before it (a sample stamped
    even slightly later belongs to a later frame). A grid time at which a stream has no sample
    yet, or (with ``max_age``, s) only one older than ``max_age`` (a stalled camera), is left out
    and reported in :attr:`Resampled.missing`; the other frames keep their grid times, so a gap
    shows in the timestamps. ``start`` defaults to the first sample of any stream, ``stop`` to the
    last sample of any stream.
    """
    if not streams:
        raise ValueError("no streams to resample")
    if not fps > 0.0 or not math.isfinite(fps):
        raise ValueError(f"fps must be positive, got {fps}")
    if any(len(stream.timestamps) == 0 for stream in streams.values()):
        empty = [name for name, stream in streams.items() if len(stream.timestamps) == 0]
        raise ValueError(f"streams without samples: {', '.join(empty)}")
    first = min(float(stream.timestamps[0]) for stream in streams.values()) if start is None else start
    last = max(float(stream.timestamps[-1]) for stream in streams.values()) if stop is None else stop
    # A stop a whole number of periods after start is on the grid despite float rounding.
    count = math.floor((last - first) * fps + 1e-9) + 1 if last >= first else 0
    grid = first + np.arange(count, dtype=np.float64) / fps
    keep = np.ones(count, dtype=bool)
    picks: dict[str, npt.NDArray[np.intp]] = {}
    missing: list[MissingSample] = []
    for name, stream in streams.items():
        index = np.searchsorted(stream.timestamps, grid, side="right") - 1
        unusable = index < 0
        missing.extend(MissingSample(float(grid[k]), name, "no sample yet") for k in np.flatnonzero(unusable))
        if max_age is not None:
            age = grid - stream.timestamps[np.maximum(index, 0)]
            stale = ~unusable & (age > max_age)
            missing.extend(
                MissingSample(
                    float(grid[k]),
                    name,
                    f"newest sample is {age[k] * 1e3:.1f} ms old (max_age {max_age * 1e3:.1f} ms)",
                )
                for k in np.flatnonzero(stale)
            )
            unusable |= stale
        keep &= ~unusable
        picks[name] = index
    missing.sort(key=lambda entry: (entry.time, entry.stream))
    return Resampled(
        timestamps=grid[keep],
        values={name: streams[name].values[index[keep]] for name, index in picks.items()},
        sample_times={name: streams[name].timestamps[index[keep]] for name, index in picks.items()},
        missing=tuple(missing),
    )


# ---- the project's episode types -------------------------------------------------------------

ORIGIN_OF_MODE = {
    RunMode.BASE_ONLY: Origin.BASE,
    RunMode.PROBE_TAKEOVER: Origin.PLD,
    RunMode.RESIDUAL_ONLY: Origin.RESIDUAL,
}
"""Where an episode's data comes from, by the supervisor's run mode (a human takeover overrides it)."""


def from_recorded_episode(episode: RecordedEpisode, *, task: str, control_rate: float) -> SftEpisode:
    """An episode of the replay buffer (:mod:`pld_ros.learning.episode_store`) as SFT data.

    ``task``: the profile's prompt (the replay buffer does not store it); ``control_rate``: Hz of
    the ticks (the profile's ``supervisor.control_rate``), which with the episode's start time gives
    the timestamps. The residual becomes ``executed - base`` (module doc); success is the SUCCESS
    outcome; the origin follows the run mode.
    """
    meta = episode.meta
    executed = episode.executed_action
    return SftEpisode(
        task=task,
        cameras={name: episode.views[:, view] for view, name in enumerate(episode.view_names)},
        state=episode.proprio,
        action=executed,
        base_action=episode.base_action,
        residual=executed - episode.base_action,
        timestamps=meta.started_at + np.arange(len(episode), dtype=np.float64) / control_rate,
        success=meta.outcome is Outcome.SUCCESS,
        info=EpisodeInfo(
            robot_id=meta.robot_id,
            origin=ORIGIN_OF_MODE[meta.mode],
            episode_id=meta.episode_id,
            extra={
                "run_id": meta.run_id,
                "outcome": meta.outcome.name.lower(),
                "mode": meta.mode.name.lower(),
                "xi": repr(meta.xi),
                "base_policy": meta.base_policy,
                "residual_version": meta.residual_version,
            },
        ),
        state_names=STATE_NAMES,
        action_names=ACTION_NAMES,
    )


def from_rollout(
    episode: Episode,
    *,
    task: str,
    control_rate: float,
    origin: Origin,
    robot_id: str,
    episode_id: int,
    start_time: float = 0.0,
) -> SftEpisode:
    """A simulated rollout (:mod:`pld_ros.training.rollouts`) as SFT data.

    A rollout knows neither who acted nor when: ``origin`` (e.g. EXPERT for the scripted expert,
    BASE for the base policy), ``robot_id``, ``episode_id`` and ``start_time`` (s) say it. Its
    actions are the executed ones with no residual. Success: the success signal held and no robot
    error cut the episode short.
    """
    actions = episode.actions
    return SftEpisode(
        task=task,
        cameras={name: episode.views[:, view] for view, name in enumerate(episode.view_names)},
        state=episode.proprio,
        action=actions,
        base_action=actions,
        residual=np.zeros_like(actions),
        timestamps=start_time + np.arange(len(episode), dtype=np.float64) / control_rate,
        success=episode.succeeded and not episode.fault,
        info=EpisodeInfo(
            robot_id=robot_id,
            origin=origin,
            episode_id=episode_id,
            extra={"seed": str(episode.seed), "fault": episode.fault},
        ),
        state_names=STATE_NAMES,
        action_names=ACTION_NAMES,
    )
