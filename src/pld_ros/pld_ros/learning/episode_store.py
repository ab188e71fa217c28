"""Recorded robot episodes on disk: one file per episode, either whole or absent, and what of each
episode is learning data.

A :class:`RecordedEpisode` is what the replay-buffer node assembles from the running graph for one
ended episode of ``T`` control ticks. Tick ``t`` holds:

- the observation ``o_t``: ``views[t]`` (the policy views, in ``view_names`` order) and
  ``proprio[t]`` (:mod:`pld_ros.core.observation`);
- what was done from it: ``base_action[t]`` (the base policy's action for ``o_t``),
  ``executed_action[t]`` (the command sent to the arm, applied at tick ``t + 1``), ``residual[t]``
  (the actor's normalized residual ``r`` in ``[-1, 1]`` with ``executed = base + xi * scale * r``;
  zero unless ``source[t]`` is COMBINED), ``source[t]`` (:class:`~pld_ros.core.episode.Source`,
  as in the command's ``ActionSource``) and ``phase[t]`` (:class:`~pld_ros.core.episode.Phase`:
  PROBING while the base policy acts alone, also in warm-up episodes, TAKEOVER after);
- what arriving at ``o_t`` earned: ``reward[t]`` (the reward of that observation, 0 at tick 0) and
  ``done[t]`` (the episode ended at this tick: true at the last tick only).

So the transition from tick ``t`` is ``(o_t, base_action[t], residual[t]) -> o_{t+1}`` with reward
``reward[t + 1]``; the last tick's action is never part of a transition.

:class:`EpisodeStore` keeps episodes in a directory, one ``<robot_id>-<episode_id>.npz`` each,
written through :func:`~pld_ros.core.atomic_file.atomic_write` (temporary file, fsync, rename,
fsync of the directory), so a killed process or a power loss leaves every episode complete or
absent. File format: ``np.savez_compressed`` (deflate) of the per-tick arrays plus ``meta``, the
:class:`EpisodeMeta` as a JSON string; nothing is pickled (read with ``allow_pickle=False``), and
zip's CRC-32 of each array detects a file damaged on disk. Compression, measured for 200 ticks of
two 128x128 views on the 2-core development machine: franka_pick_cube's rendered views
19.7 MB -> 2.7 MB, write 0.26 s instead of 0.03 s (load 0.05 s instead of 0.01 s); the same views
with camera-like noise (sigma 2) 19.7 MB -> 12.5 MB, write 0.7-1.3 s (machine load). An episode is
written once, while the supervisor resets the scene (seconds), from a thread that is not the
control tick's, so the time is affordable and the space (and the bytes sent to a trainer) is not.

:func:`learning_steps` turns an episode into the learner's :class:`EpisodeSteps`, and
:func:`buffer_for` says which replay buffer it belongs to (rules at each function).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import numpy.typing as npt

from pld_ros.core.atomic_file import atomic_write, remove_temporaries
from pld_ros.core.episode import Outcome, Phase, RunMode, Source
from pld_ros.core.observation import ACTION_DIM, PROPRIO_DIM, Float32Array
from pld_ros.learning.episode_steps import EpisodeSteps

FORMAT_VERSION = 1
"""Version of the file layout, stored in each file's metadata; other versions are refused."""
EPISODE_SUFFIX = ".npz"
LOCK_FILE = ".writer.lock"
"""Held (flock) by the one :class:`EpisodeStore` that may write a directory."""

Buffer = Literal["offline", "online"]
"""The replay buffer an episode's learning steps go to (RLPD samples half of a batch from each)."""

_ROBOT_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a profile's robot_id is a ROS name
_ENDED = (Outcome.SUCCESS, Outcome.FAILURE, Outcome.ABORTED)
_LEARNABLE_SOURCES = (Source.BASE, Source.COMBINED)
_RESIDUAL_TOLERANCE = 1e-6  # float32 rounding of a tanh-squashed residual
_TICK_ARRAYS = (
    "views",
    "proprio",
    "base_action",
    "executed_action",
    "residual",
    "reward",
    "done",
    "phase",
    "source",
)


@dataclass(frozen=True)
class EpisodeMeta:
    """Who recorded an episode, under which policies, and how it ended."""

    robot_id: str
    """The profile's ``robot_id``; several robots may feed one trainer."""
    episode_id: int
    """The supervisor's episode id (unique per robot across runs)."""
    run_id: str
    """The supervisor's run directory name (``<profile>-<UTC stamp>``)."""
    outcome: Outcome
    """SUCCESS, FAILURE or ABORTED."""
    mode: RunMode
    """BASE_ONLY for warm-up (and baseline) episodes."""
    xi: float
    """Residual scale of the weights in use at the start of the episode (a weight update in
    mid-episode changes it; the learner treats all data as off-policy anyway)."""
    base_policy: str
    """Backend and model of the base policy (``BaseAction.policy``)."""
    residual_version: str
    """Version of the residual weights in use at the start; empty when none were loaded."""
    started_at: float
    """Wall-clock (Unix) time of the episode's first tick, s."""

    def __post_init__(self) -> None:
        if not _ROBOT_ID.fullmatch(self.robot_id):
            raise ValueError(f"robot_id must be a ROS name, got {self.robot_id!r}")
        if self.episode_id < 0:
            raise ValueError(f"episode_id must not be negative, got {self.episode_id}")
        if self.outcome not in _ENDED:
            raise ValueError(f"a recorded episode has ended, got outcome {self.outcome.name}")
        if not np.isfinite(self.xi) or not np.isfinite(self.started_at):
            raise ValueError("xi and started_at must be finite")

    def to_json(self) -> str:
        data: dict[str, Any] = asdict(self)
        data["outcome"] = self.outcome.name.lower()
        data["mode"] = self.mode.name.lower()
        return json.dumps({"format": FORMAT_VERSION, **data}, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> EpisodeMeta:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise ValueError(f"not episode metadata of format {FORMAT_VERSION}")
        return EpisodeMeta(
            robot_id=str(data["robot_id"]),
            episode_id=int(data["episode_id"]),
            run_id=str(data["run_id"]),
            outcome=Outcome[str(data["outcome"]).upper()],
            mode=RunMode[str(data["mode"]).upper()],
            xi=float(data["xi"]),
            base_policy=str(data["base_policy"]),
            residual_version=str(data["residual_version"]),
            started_at=float(data["started_at"]),
        )


@dataclass(frozen=True, eq=False)
class RecordedEpisode:
    """One ended episode of ``T >= 1`` ticks as the robot recorded it (tick layout: module doc).
    Compared by identity (its arrays have no single truth value)."""

    meta: EpisodeMeta
    view_names: tuple[str, ...]
    views: npt.NDArray[np.uint8]
    """``[T, V, H, W, 3]`` policy views, V = ``len(view_names)``."""
    proprio: Float32Array
    """``[T, PROPRIO_DIM]``."""
    base_action: Float32Array
    """``[T, ACTION_DIM]``."""
    executed_action: Float32Array
    """``[T, ACTION_DIM]``."""
    residual: Float32Array
    """``[T, ACTION_DIM]`` in ``[-1, 1]``, zero where the source is not COMBINED."""
    reward: Float32Array
    """``[T]``."""
    done: npt.NDArray[np.bool_]
    """``[T]``, true at the last tick only."""
    phase: npt.NDArray[np.uint8]
    """``[T]`` :class:`Phase` values."""
    source: npt.NDArray[np.uint8]
    """``[T]`` :class:`Source` values."""

    def __post_init__(self) -> None:
        ticks = len(self.done)
        if ticks < 1:
            raise ValueError("an episode needs at least one tick")
        if len(set(self.view_names)) != len(self.view_names):
            raise ValueError(f"view names repeat: {self.view_names}")
        expected: dict[str, tuple[tuple[int, ...], type[np.generic]]] = {
            "proprio": ((ticks, PROPRIO_DIM), np.float32),
            "base_action": ((ticks, ACTION_DIM), np.float32),
            "executed_action": ((ticks, ACTION_DIM), np.float32),
            "residual": ((ticks, ACTION_DIM), np.float32),
            "reward": ((ticks,), np.float32),
            "done": ((ticks,), np.bool_),
            "phase": ((ticks,), np.uint8),
            "source": ((ticks,), np.uint8),
        }
        for name, (shape, dtype) in expected.items():
            array = getattr(self, name)
            if array.shape != shape or array.dtype != dtype:
                raise ValueError(
                    f"{name}: expected {np.dtype(dtype)} {shape}, got {array.dtype} {array.shape}"
                )
            if dtype is np.float32 and not np.all(np.isfinite(array)):
                raise ValueError(f"{name} holds NaN or infinite values")
        views = self.views
        if (
            views.dtype != np.uint8
            or views.ndim != 5
            or views.shape[:2] != (ticks, len(self.view_names))
            or views.shape[4] != 3
        ):
            raise ValueError(
                f"views: expected uint8 ({ticks}, {len(self.view_names)}, H, W, 3), "
                f"got {views.dtype} {views.shape}"
            )
        if self.done[-1] != np.True_ or np.any(self.done[:-1]):
            raise ValueError("done must be true at the last tick and only there")
        for name, enum in (("phase", Phase), ("source", Source)):
            values = set(getattr(self, name).tolist())
            unknown = values - {member.value for member in enum}
            if unknown:
                raise ValueError(f"{name}: unknown values {sorted(unknown)}")
        combined = self.source == Source.COMBINED
        if np.any(self.residual[~combined] != 0.0):
            raise ValueError("residual must be zero at ticks whose source is not COMBINED")
        if np.any(np.abs(self.residual) > 1.0 + _RESIDUAL_TOLERANCE):
            raise ValueError("residual must lie in [-1, 1]")
        if self.meta.mode is RunMode.BASE_ONLY and np.any(combined):
            raise ValueError("a BASE_ONLY episode has COMBINED ticks")

    def __len__(self) -> int:
        return len(self.done)

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-tick arrays by name (as stored)."""
        return {name: getattr(self, name) for name in _TICK_ARRAYS}


# ---- learning data ---------------------------------------------------------------------------


def learning_steps(episode: RecordedEpisode) -> EpisodeSteps | None:
    """The learning data of ``episode``, or None when it has none.

    - ABORTED: none (a fault or an operator ended it; it says nothing about the policy).
    - BASE_ONLY (warm-up): every tick, with a zero residual.
    - Otherwise the probing ticks are dropped: learning starts at the takeover, the first tick
      whose phase is TAKEOVER or whose source is COMBINED (the supervisor announces the phase one
      tick after the first COMBINED command, so the recorded phase may lag).
    - A tick whose action came from anyone but the base policy or the combined policy (a human
      taking over, a reset motion) ends the learning data there: the observation of that tick is
      the last one, bootstrapped from (not terminal). A human's action is in general not of the
      form ``base + xi * scale * r`` with ``r`` in ``[-1, 1]`` (with a small xi it almost never
      is), so a clipped residual would label the transition with an action that was not executed
      and teach the critic a wrong value; PLD's Stage 1 learns autonomously, so those steps are
      interventions, not data.
    - ``terminal`` is true when the episode ended in SUCCESS with its last transition learned;
      a step limit (or a stage failure) ends it without a terminal state, so it bootstraps.
    - State = ``proprio`` (float32), images = ``views`` (None when there are no views).

    At least two observations (one transition) are needed, else None.
    """
    meta = episode.meta
    if meta.outcome is Outcome.ABORTED:
        return None
    last = len(episode) - 1
    if meta.mode is RunMode.BASE_ONLY:
        start = 0
    else:
        takeover = np.flatnonzero((episode.phase == Phase.TAKEOVER) | (episode.source == Source.COMBINED))
        if len(takeover) == 0:
            return None
        start = int(takeover[0])
    foreign = np.flatnonzero(~np.isin(episode.source[start:last], _LEARNABLE_SOURCES))
    stop = start + int(foreign[0]) if len(foreign) else last
    if stop - start < 1:
        return None
    terminal = stop == last and meta.outcome is Outcome.SUCCESS
    return EpisodeSteps(
        state=episode.proprio[start : stop + 1],
        base_action=episode.base_action[start : stop + 1],
        residual=episode.residual[start:stop],
        reward=episode.reward[start + 1 : stop + 1],
        terminal=terminal,
        images=episode.views[start : stop + 1] if episode.view_names else None,
    )


def buffer_for(episode: RecordedEpisode) -> Buffer | None:
    """The replay buffer of ``episode``'s learning steps; None when it has none.

    "offline": a successful BASE_ONLY (warm-up) episode, the base policy's own success, start to
    end (Cal-QL pretrains on these; RLPD draws half of each batch from them). "online": everything
    else with learning steps, including a failed warm-up episode (valid data of the base policy,
    and the critic needs failures too) and one a human took over.
    """
    steps = learning_steps(episode)
    if steps is None:
        return None
    if episode.meta.mode is RunMode.BASE_ONLY and steps.terminal:
        return "offline"
    return "online"


# ---- files -----------------------------------------------------------------------------------


class EpisodeFileError(ValueError):
    """A file that is not a complete episode of this format (truncated, damaged, foreign)."""


def episode_file_name(robot_id: str, episode_id: int) -> str:
    """``<robot_id>-<episode_id, 10 digits>.npz``: name order is episode order per robot."""
    return f"{robot_id}-{episode_id:010d}{EPISODE_SUFFIX}"


def save_episode(episode: RecordedEpisode, path: Path) -> Path:
    """Write ``episode`` to ``path`` atomically and durably (see the module doc for the format)."""

    members: dict[str, Any] = {
        "meta": np.str_(episode.meta.to_json()),
        "view_names": np.array(episode.view_names, dtype=np.str_),
        **episode.arrays(),
    }

    def write(out: BinaryIO) -> None:
        np.savez_compressed(out, **members)

    return atomic_write(path, write)


def load_episode(path: Path) -> RecordedEpisode:
    """Read an episode written by :func:`save_episode`; raise :class:`EpisodeFileError` for any
    file that is not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return RecordedEpisode(
                meta=EpisodeMeta.from_json(str(data["meta"])),
                view_names=tuple(str(name) for name in data["view_names"]),
                views=data["views"],
                proprio=data["proprio"],
                base_action=data["base_action"],
                executed_action=data["executed_action"],
                residual=data["residual"],
                reward=data["reward"],
                done=data["done"],
                phase=data["phase"],
                source=data["source"],
            )
    except (OSError, EOFError, KeyError, TypeError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise EpisodeFileError(f"{path}: not a complete episode file: {exc}") from exc


class EpisodeStore:
    """A directory of recorded episodes, one file each (:func:`episode_file_name`).

    A writable store (the default) creates the directory, takes an exclusive lock on it (one
    writing process per directory; a second one gets a RuntimeError), and removes the temporaries
    that a killed writer left behind (safe because no other writer can be running). A read-only
    store (``writable=False``, e.g. a trainer reading a robot's directory) neither locks nor
    cleans, and skips temporaries like the writer does. Close a writable store (or use ``with``)
    to release the lock; a killed process releases it by dying.
    """

    def __init__(self, directory: Path, *, writable: bool = True) -> None:
        self.directory = directory
        self.writable = writable
        self.problems: dict[Path, str] = {}
        """Files that failed to load, with why; filled by :meth:`episodes`."""
        self.removed_temporaries: list[Path] = []
        """Leftovers of killed writers removed on opening."""
        self._lock: int | None = None
        if writable:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RuntimeError(f"{directory}: another episode store is writing there") from None
            self._lock = fd
            self.removed_temporaries = remove_temporaries(directory)

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the writer's lock (idempotent)."""
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the flock
            self._lock = None

    def write(self, episode: RecordedEpisode) -> Path:
        """Store ``episode`` durably; refuse to replace an episode already stored (the same robot
        and episode id twice is a bug upstream, and the first one is data)."""
        if self._lock is None:
            raise RuntimeError(f"{self.directory}: store is read-only or closed")
        path = self.directory / episode_file_name(episode.meta.robot_id, episode.meta.episode_id)
        if path.exists():
            raise FileExistsError(f"{path}: episode already stored")
        return save_episode(episode, path)

    def paths(self) -> list[Path]:
        """The stored episode files in name order (per robot, by episode id); temporaries and
        other dot-files are skipped."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob(f"*{EPISODE_SUFFIX}") if not p.name.startswith("."))

    def load(self, path: Path) -> RecordedEpisode:
        """One stored episode; :class:`EpisodeFileError` if the file is not one."""
        return load_episode(path)

    def episodes(self) -> Iterator[RecordedEpisode]:
        """The stored episodes in :meth:`paths` order, loaded one at a time (a run's views do not
        fit in memory at once). A file that fails to load is skipped and recorded in
        :attr:`problems`; it never stops the others from loading."""
        for path in self.paths():
            try:
                episode = load_episode(path)
            except EpisodeFileError as exc:
                self.problems[path] = str(exc)
                continue
            self.problems.pop(path, None)
            yield episode
