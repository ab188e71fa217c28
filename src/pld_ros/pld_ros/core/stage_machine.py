"""The stage machine of a task: which stage the robot works on, and when it succeeded or failed.

Each stage of the profile (``reward.stages``) is scored by one head of the success classifier. A
stage succeeds when its head's probability is above the stage's threshold for ``debounce_frames``
consecutive frames (one flickering frame never counts), and fails when it runs longer than its
timeout or an external failure detector fires (:meth:`StageMachine.fail`, e.g. a dropped object).
Success follows ``on_success`` (the next stage, or "done"); failure follows ``on_failure`` (a
recovery stage, or "abort"), once the stage's ``retries`` in a row have failed too. A stage
entered through a failure edge (or retried) is *recovering* until it succeeds.

"done" ends the task with success and "abort" with failure; both are terminal until
:meth:`StageMachine.reset`. A *cycle* is one completion of the whole task: reaching "done", or a
stage succeeding into an earlier stage (a task that loops, like the YAM's insert / remove), unless
that stage was a recovery (its success only gets the loop back on track).

Pure and deterministic: the caller passes the time (seconds on any monotonic clock) to every call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum, IntEnum

from pld_ros.profile import Stage

DONE = "done"
"""``on_success`` target that ends the task with success."""
ABORT = "abort"
"""``on_failure`` target that ends the task with failure."""


class StageStatus(IntEnum):
    """Same values as the STATUS_* constants of pld_msgs/StageState."""

    ACTIVE = 0
    SUCCEEDED = 1
    FAILED = 2
    RECOVERING = 3


class TaskOutcome(Enum):
    """How the task ended: "done" was reached, or a failure edge led to "abort"."""

    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True)
class StageUpdate:
    """The machine after one update; on a transition, ``index`` and ``name`` are those of the stage
    that succeeded or failed (the next update reports the stage entered)."""

    index: int
    name: str
    status: StageStatus
    success_probability: float
    """The stage head's latest probability (NaN before the first frame of the stage)."""
    positive_streak: int
    """Consecutive frames above the threshold: the debounce counter."""
    time_in_stage: float
    """Seconds since the stage was entered."""
    cycle: int
    """Completed cycles of the whole task."""
    reason: str
    """Why the last transition happened."""
    outcome: TaskOutcome | None = None
    """Set once the task has ended ("done" or "abort"); it stays set until :meth:`StageMachine.reset`."""

    @property
    def done(self) -> bool:
        return self.outcome is not None


class StageMachine:
    """Debounced, timed stage transitions over the profile's stages; :meth:`reset` before use."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        if not stages:
            raise ValueError("a stage machine needs at least one stage")
        self.stages = tuple(stages)
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        self._index_of = {name: index for index, name in enumerate(names)}
        for stage in self.stages:
            if stage.on_success != DONE and stage.on_success not in self._index_of:
                raise ValueError(f"stage {stage.name!r}: on_success {stage.on_success!r} is not a stage")
            if stage.on_failure != ABORT and stage.on_failure not in self._index_of:
                raise ValueError(f"stage {stage.name!r}: on_failure {stage.on_failure!r} is not a stage")
        self._started = False
        self._index = 0
        self._entered_at = 0.0
        self._streak = 0
        self._probability = math.nan
        self._cycle = 0
        self._recovering = False
        self._reason = ""
        self._failures = 0
        """Failures in a row of the current stage (its retries so far)."""
        self._terminal: StageUpdate | None = None

    @property
    def stage(self) -> Stage:
        """The stage being worked on."""
        return self.stages[self._index]

    def reset(self, now: float) -> None:
        """Start over at the first stage (a new episode); the cycle count restarts too."""
        self._started = True
        self._cycle = 0
        self._terminal = None
        self._failures = 0
        self._enter(0, now, recovering=False, reason="reset")

    def restart_stage(self, now: float) -> None:
        """Restart the current stage's clock and debounce, keeping where the machine is (a stage
        episode that starts a tick or a pause after the previous one ended)."""
        self._require_started()
        if self._terminal is None:
            self._enter(self._index, now, recovering=self._recovering, reason=self._reason)

    def update(self, probabilities: Sequence[float], now: float) -> StageUpdate:
        """Feed one frame's success probabilities (indexed by the stages' ``head``)."""
        if self._terminal is not None:
            return self._terminal
        self._require_started()
        stage = self.stage
        if stage.head >= len(probabilities):
            raise ValueError(
                f"stage {stage.name!r} reads head {stage.head}, but the scores have "
                f"{len(probabilities)} value(s)"
            )
        probability = float(probabilities[stage.head])
        self._probability = probability
        # NaN compares false: a broken classifier output never counts as positive.
        self._streak = self._streak + 1 if probability > stage.threshold else 0
        if self._streak >= stage.debounce_frames:
            return self._succeed(now)
        elapsed = now - self._entered_at
        if elapsed >= stage.timeout:
            return self._route_failure(f"{stage.name} timed out after {elapsed:.1f} s", now)
        return self.snapshot(now)

    def fail(self, reason: str, now: float) -> StageUpdate:
        """An external failure detector fired: route the current stage as on a timeout."""
        if self._terminal is not None:
            return self._terminal
        self._require_started()
        return self._route_failure(f"{self.stage.name} failed: {reason}", now)

    def snapshot(self, now: float) -> StageUpdate:
        """The machine as it is, without feeding a frame."""
        if self._terminal is not None:
            return self._terminal
        return StageUpdate(
            index=self._index,
            name=self.stage.name,
            status=StageStatus.RECOVERING if self._recovering else StageStatus.ACTIVE,
            success_probability=self._probability,
            positive_streak=self._streak,
            time_in_stage=now - self._entered_at if self._started else 0.0,
            cycle=self._cycle,
            reason=self._reason,
        )

    # -- transitions ---------------------------------------------------------------------------

    def _require_started(self) -> None:
        if not self._started:
            raise RuntimeError("StageMachine.update before reset(): the start time is needed first")

    def _enter(self, index: int, now: float, *, recovering: bool, reason: str) -> None:
        if index != self._index:
            self._failures = 0
        self._index = index
        self._entered_at = now
        self._streak = 0
        self._probability = math.nan
        self._recovering = recovering
        self._reason = reason

    def _transition_update(self, status: StageStatus, now: float, reason: str) -> StageUpdate:
        return StageUpdate(
            index=self._index,
            name=self.stage.name,
            status=status,
            success_probability=self._probability,
            positive_streak=self._streak,
            time_in_stage=now - self._entered_at,
            cycle=self._cycle,
            reason=reason,
        )

    def _succeed(self, now: float) -> StageUpdate:
        stage = self.stage
        reason = f"{stage.name} succeeded ({self._streak} frames above {stage.threshold:g})"
        if stage.on_success == DONE:
            self._cycle += 1
            update = self._transition_update(StageStatus.SUCCEEDED, now, reason)
            self._terminal = replace(update, outcome=TaskOutcome.SUCCESS)
            return self._terminal
        target = self._index_of[stage.on_success]
        if target <= self._index and not self._recovering:
            self._cycle += 1
        update = self._transition_update(StageStatus.SUCCEEDED, now, reason)
        self._failures = 0
        self._enter(target, now, recovering=False, reason=reason)
        return update

    def _route_failure(self, reason: str, now: float) -> StageUpdate:
        stage = self.stage
        update = self._transition_update(StageStatus.FAILED, now, reason)
        self._failures += 1
        if self._failures <= stage.retries:
            self._enter(self._index, now, recovering=True, reason=f"{reason} (retry {self._failures})")
            return update
        if stage.on_failure == ABORT:
            self._terminal = replace(update, outcome=TaskOutcome.FAILURE)
            return self._terminal
        self._enter(self._index_of[stage.on_failure], now, recovering=True, reason=reason)
        return update
