"""Whole episodes from the running graph's ticks: what the replay-buffer node stores, without ROS.

The residual node sends one :class:`Tick` per control tick of an episode (``buffer/steps``), and
the supervisor ends each episode with an :class:`Ending` (its ENDED event). The
:class:`EpisodeAssembler` collects the ticks of the current episode in step order and, once the
episode has ended, turns them into a :class:`~pld_ros.learning.episode_store.RecordedEpisode`
laid out as that module says: reward 1 on the last tick of a SUCCESS (0 everywhere else), done
on the last tick only, metadata from the first tick and the ending.

Rules:

- One episode at a time, keyed by its id. A tick of another id while an episode is still open
  discards that episode as *unfinished* (its ENDED never came: the supervisor died, or this node
  missed the event); a tick of an episode already assembled is *late* and ignored.
- The ticks of an episode are its steps 0, 1, 2, ... without a hole. A missing step (a record
  lost on the way, the residual node without an observation for a tick, this node started in
  the middle of an episode), a repeated step, or more ticks than the episode can have makes the
  episode *incomplete*: it is reported with the reason and not stored, since a transition across
  a hole would pair an observation with the wrong next one. Its ticks are freed at once, so
  memory stays bounded by one episode of ``max_episode_steps + TICK_SLACK`` ticks.
- The ENDED event and the last records travel on different topics and may arrive in either
  order. The supervisor counts ``Ending.steps`` ticks, the residual node numbers them from 0, so
  the episode is its steps ``0 .. steps - 1`` (the two counts agree within a tick, depending on
  which of STARTED and the first base action reached the residual node first); a tick past that
  is dropped (*after end*). The episode is assembled when its step ``steps - 1`` is there, or
  ``grace`` seconds after the ending arrived, with what came by then.
- ABORTED episodes are assembled and stored like the others: the store keeps what the robot did,
  and :func:`~pld_ros.learning.episode_store.learning_steps` is the one place that decides an
  aborted episode holds no learning data (its files help to diagnose the fault). An episode
  that ends without any tick (aborted during its reset) yields nothing.
- Data that :class:`RecordedEpisode` refuses (a residual where the source is not COMBINED, views
  of different sizes, ...) makes the episode *invalid*: reported, not stored.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from pld_ros.core.episode import Outcome, Phase, RunMode, Source
from pld_ros.core.observation import Float32Array
from pld_ros.learning.episode_store import EpisodeMeta, RecordedEpisode

TICK_SLACK = 5
"""Ticks an episode may have beyond the profile's ``max_episode_steps`` (our choice: the residual
node's count may run a tick ahead of the supervisor's, and the cut at the end removes the extra;
anything beyond a few ticks is a bug upstream)."""
GRACE = 1.0
"""Seconds the assembler waits after an ENDED event for the episode's last ticks (our choice:
records arrive within milliseconds on a loaded 2-core machine; the reset that follows an episode
takes seconds, so waiting costs nothing)."""
_REMEMBERED_EPISODES = 16  # ids of assembled episodes kept to recognise their late ticks


@dataclass(frozen=True, eq=False)
class Tick:
    """One control tick as the residual node recorded it (a ``StepRecord`` on ``buffer/steps``)."""

    episode_id: int
    step: int
    """Ticks since the episode started, from 0."""
    views: npt.NDArray[np.uint8]
    """``[V, H, W, 3]`` policy views, in the assembler's ``view_names`` order."""
    proprio: Float32Array
    base_action: Float32Array
    executed_action: Float32Array
    residual: Float32Array
    """The actor's normalized residual; zeros unless ``source`` is COMBINED."""
    xi: float
    phase: Phase
    source: Source
    base_policy: str
    residual_version: int
    """Version of the residual weights used; 0 when none were loaded."""
    wall_time: float
    """Unix time the tick was recorded, s."""


@dataclass(frozen=True)
class Ending:
    """The supervisor's ENDED event of an episode."""

    episode_id: int
    outcome: Outcome
    mode: RunMode
    steps: int
    """Ticks the supervisor counted (``EpisodeEvent.step``)."""
    run_id: str
    """The supervisor's run directory name."""


DropKind = Literal["incomplete", "unfinished", "invalid"]


@dataclass(frozen=True)
class Dropped:
    """An episode that is not stored, and why."""

    episode_id: int
    kind: DropKind
    reason: str


Assembled = RecordedEpisode | Dropped


@dataclass
class AssemblyCounts:
    """What the assembler has seen, for diagnostics."""

    assembled: int = 0
    incomplete: int = 0
    """Ended with a hole in its steps (or too many ticks): not stored."""
    unfinished: int = 0
    """Discarded before its end: a tick of another episode came first, or the node shut down."""
    invalid: int = 0
    """Refused by RecordedEpisode's checks: not stored."""
    late_ticks: int = 0
    """Ticks of an episode already assembled or dropped."""
    after_end_ticks: int = 0
    """Ticks numbered past the supervisor's count of the episode."""
    ended_without_ticks: int = 0
    """ENDED events of episodes no tick arrived for (aborted while resetting, or before the node
    started)."""


@dataclass
class _Open:
    episode_id: int
    ticks: list[Tick] = field(default_factory=list)
    problem: str = ""
    """Why the episode cannot be stored; once set, its ticks are freed."""
    ending: Ending | None = None
    ended_at: float = 0.0


class EpisodeAssembler:
    """Collects ticks into episodes (rules: module docstring). Not thread-safe: one caller."""

    def __init__(
        self, robot_id: str, view_names: Sequence[str], max_episode_steps: int, grace: float = GRACE
    ) -> None:
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.robot_id = robot_id
        self.view_names = tuple(view_names)
        self.max_ticks = max_episode_steps + TICK_SLACK
        self.grace = grace
        self.counts = AssemblyCounts()
        self._open: _Open | None = None
        self._done: deque[int] = deque(maxlen=_REMEMBERED_EPISODES)

    @property
    def open_episode(self) -> int | None:
        """Id of the episode being collected, None between episodes."""
        return self._open.episode_id if self._open is not None else None

    def add(self, tick: Tick, now: float) -> list[Assembled]:
        """Take one tick; returns the episodes it completes or discards (in order)."""
        out: list[Assembled] = []
        if tick.episode_id in self._done:
            self.counts.late_ticks += 1
            return out
        current = self._open
        if current is not None and current.episode_id != tick.episode_id:
            out.append(self._close(current, f"a tick of episode {tick.episode_id} came before its end"))
            current = None
        if current is None:
            current = self._open = _Open(tick.episode_id)
        if current.ending is not None and tick.step >= current.ending.steps:
            self.counts.after_end_ticks += 1
        elif not current.problem:
            self._append(current, tick)
        if self._complete(current, now):
            out.append(self._close(current))
        return out

    def end(self, ending: Ending, now: float) -> list[Assembled]:
        """Take an ENDED event; returns the episode if it is complete already."""
        current = self._open
        if ending.episode_id in self._done:
            return []  # the same event again (transient-local history)
        if current is None or current.episode_id != ending.episode_id:
            self.counts.ended_without_ticks += 1
            self._done.append(ending.episode_id)
            return []
        current.ending, current.ended_at = ending, now
        beyond = [t for t in current.ticks if t.step >= ending.steps]
        if beyond:
            self.counts.after_end_ticks += len(beyond)
            current.ticks = current.ticks[: len(current.ticks) - len(beyond)]
        return [self._close(current)] if self._complete(current, now) else []

    def poll(self, now: float) -> list[Assembled]:
        """Assemble an ended episode whose grace period has passed; call it periodically."""
        current = self._open
        if current is not None and current.ending is not None and now - current.ended_at >= self.grace:
            return [self._close(current)]
        return []

    def flush(self) -> list[Assembled]:
        """At shutdown: assemble an ended episode now; an open one that never ended is dropped."""
        return [self._close(self._open, "it had not ended at shutdown")] if self._open is not None else []

    # -- internals -----------------------------------------------------------------------------

    def _append(self, current: _Open, tick: Tick) -> None:
        expected = len(current.ticks)
        if tick.step != expected:
            if tick.step > expected:
                missing = f"{expected}" if tick.step == expected + 1 else f"{expected}..{tick.step - 1}"
                current.problem = f"step(s) {missing} missing"
            else:
                current.problem = f"step {tick.step} arrived again or out of order (after {expected - 1})"
        elif expected >= self.max_ticks:
            current.problem = f"more than {self.max_ticks} ticks"
        else:
            current.ticks.append(tick)
            return
        current.ticks = []

    def _complete(self, current: _Open, now: float) -> bool:
        ending = current.ending
        if ending is None:
            return False
        last = current.ticks[-1].step if current.ticks else -1
        return bool(current.problem) or last >= ending.steps - 1 or now - current.ended_at >= self.grace

    def _close(self, current: _Open, unfinished: str = "") -> Assembled:
        self._open = None
        self._done.append(current.episode_id)
        ending = current.ending
        if ending is None:
            self.counts.unfinished += 1
            return Dropped(current.episode_id, "unfinished", f"never ended: {unfinished}")
        if current.problem:
            self.counts.incomplete += 1
            return Dropped(current.episode_id, "incomplete", current.problem)
        if not current.ticks:
            self.counts.ended_without_ticks += 1
            return Dropped(current.episode_id, "incomplete", "no tick before the end")
        try:
            episode = self._episode(current.ticks, ending)
        except ValueError as exc:
            self.counts.invalid += 1
            return Dropped(current.episode_id, "invalid", str(exc))
        self.counts.assembled += 1
        return episode

    def _episode(self, ticks: list[Tick], ending: Ending) -> RecordedEpisode:
        first = ticks[0]
        length = len(ticks)
        reward = np.zeros(length, dtype=np.float32)
        reward[-1] = 1.0 if ending.outcome is Outcome.SUCCESS else 0.0
        done = np.zeros(length, dtype=np.bool_)
        done[-1] = True
        meta = EpisodeMeta(
            robot_id=self.robot_id,
            episode_id=ending.episode_id,
            run_id=ending.run_id,
            outcome=ending.outcome,
            mode=ending.mode,
            xi=float(first.xi),
            base_policy=first.base_policy,
            residual_version=str(first.residual_version) if first.residual_version else "",
            started_at=first.wall_time,
        )
        return RecordedEpisode(
            meta=meta,
            view_names=self.view_names,
            views=np.stack([t.views for t in ticks]),
            proprio=np.stack([t.proprio for t in ticks]).astype(np.float32, copy=False),
            base_action=np.stack([t.base_action for t in ticks]).astype(np.float32, copy=False),
            executed_action=np.stack([t.executed_action for t in ticks]).astype(np.float32, copy=False),
            residual=np.stack([t.residual for t in ticks]).astype(np.float32, copy=False),
            reward=reward,
            done=done,
            phase=np.array([t.phase for t in ticks], dtype=np.uint8),
            source=np.array([t.source for t in ticks], dtype=np.uint8),
        )
