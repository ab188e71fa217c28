"""The guard between every command and every arm: applied once per control tick, before a backend.

Policies speak in per-tick deltas; arms track absolute targets. The filter integrates deltas into
one absolute target and, on the way, enforces the profile's :class:`SafetyLimits`:

- non-finite commands are rejected (treated as no command),
- each tick's translation and rotation are scaled down to the step limits,
- the target is clipped into the workspace box, and kept within a bounded lag of the measured
  pose on every tick, with or without a command, so a blocked arm does not wind up a target it
  would later jump to and an arm carried away is not pulled back hard,
- the gripper closure is clipped to its range,
- after ``command_timeout_ticks`` ticks without a command the arm holds,
- a latched e-stop holds the arm until it is cleared explicitly.

Simulators enforce none of this (franky-sim lets an unreachable target "succeed" at the joint
limits), so this filter is the only guard there, and the same one runs on hardware. Every
rejection or clip is counted for diagnostics.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import Enum

import numpy as np

from pld_ros.core.spatial import FloatArray, Pose
from pld_ros.profile import SafetyLimits


@dataclass(frozen=True)
class DeltaCommand:
    """One tick's command: translation (m) and axis-angle rotation (rad) in the base frame,
    plus the absolute gripper closure in [0, 1]."""

    translation: FloatArray
    rotation: FloatArray
    gripper: float

    @staticmethod
    def of(
        translation: tuple[float, float, float], rotation: tuple[float, float, float], gripper: float
    ) -> DeltaCommand:
        return DeltaCommand(
            np.asarray(translation, dtype=np.float64), np.asarray(rotation, dtype=np.float64), gripper
        )

    def is_finite(self) -> bool:
        return bool(np.all(np.isfinite(self.translation)) and np.all(np.isfinite(self.rotation))) and bool(
            np.isfinite(self.gripper)
        )


class Decision(Enum):
    MOVE = "move"
    """Track ``target``."""
    HOLD = "hold"
    """Command timeout: stop where the arm is."""
    ESTOP = "estop"
    """E-stop latched: stop where the arm is and accept nothing."""


@dataclass(frozen=True)
class SafetyOutput:
    decision: Decision
    target: Pose
    gripper: float
    accepted: bool = False
    """A command arrived this tick and was applied (possibly clipped)."""


# Counter keys, as they appear in diagnostics.
NONFINITE = "rejected_nonfinite"
TRANSLATION_CLIPPED = "clipped_translation_step"
ROTATION_CLIPPED = "clipped_rotation_step"
WORKSPACE_CLIPPED = "clipped_workspace"
LAG_CLIPPED = "clipped_target_lag"
GRIPPER_CLIPPED = "clipped_gripper"
TIMEOUTS = "command_timeouts"
ESTOP_REJECTED = "rejected_estop"


def clip_norm(vector: FloatArray, limit: float) -> tuple[FloatArray, bool]:
    """``vector`` scaled down to length ``limit`` when longer, and whether it was."""
    norm = float(np.linalg.norm(vector))
    if norm <= limit:
        return vector, False
    return vector * (limit / norm), True


def step_toward(
    base: Pose, goal: Pose, max_translation: float, max_rotation: float
) -> tuple[FloatArray, FloatArray]:
    """The delta (translation, rotation vector) from ``base`` toward ``goal``, each part no longer
    than its per-tick limit. Step from the integrated target, not the lagging measured pose, or
    the arm overshoots."""
    translation, rotation = base.delta_to(goal)
    return clip_norm(translation, max_translation)[0], clip_norm(rotation, max_rotation)[0]


class SafetyFilter:
    """Stateful per-arm filter; call :meth:`reset` with the measured pose before the first tick."""

    def __init__(self, limits: SafetyLimits, *, max_target_lag_steps: float = 5.0) -> None:
        """``max_target_lag_steps``: how far the target may lead the measured pose, in step
        limits (5 steps: 0.1 m and 0.5 rad at the default 0.02 m and 0.1 rad)."""
        self.limits = limits
        self.counters: Counter[str] = Counter()
        self._low = np.asarray(limits.workspace_min, dtype=np.float64)
        self._high = np.asarray(limits.workspace_max, dtype=np.float64)
        self._max_lag = max_target_lag_steps * limits.max_translation_step
        self._max_rotation_lag = max_target_lag_steps * limits.max_rotation_step
        self._target: Pose | None = None
        self._gripper = limits.gripper_min
        self._idle_ticks = 0
        self._estop_reason: str | None = None

    # -- state ---------------------------------------------------------------------------------

    @property
    def target(self) -> Pose | None:
        return self._target

    @property
    def gripper_target(self) -> float:
        return self._gripper

    @property
    def estop_reason(self) -> str | None:
        """Why the e-stop is latched, or None when it is not."""
        return self._estop_reason

    def reset(self, measured: Pose, gripper: float) -> None:
        """Restart integration from where the arm is (start-up, after a hold, recovery or reconnect).

        The measured pose is clipped into the workspace, so an arm that starts outside the box is
        pulled back in by the first commands rather than left free outside it.
        """
        self._target = Pose(np.clip(measured.position, self._low, self._high), measured.orientation)
        self._gripper = float(np.clip(gripper, self.limits.gripper_min, self.limits.gripper_max))
        self._idle_ticks = 0

    def engage_estop(self, reason: str) -> None:
        if self._estop_reason is None:
            self._estop_reason = reason or "e-stop"

    def clear_estop(self) -> None:
        self._estop_reason = None
        # Commands that were queued while stopped must not count toward a fresh timeout.
        self._idle_ticks = 0

    def _within_lag(self, target: Pose, measured: Pose) -> Pose:
        """``target`` drawn back to within the bounded lead of the measured pose, and into the box."""
        lead, clipped = clip_norm(target.position - measured.position, self._max_lag)
        self.counters[LAG_CLIPPED] += clipped
        # Re-clip: the lag limit pulls toward the measured pose, which may itself be outside.
        position = np.clip(measured.position + lead, self._low, self._high)
        # Rotation too: an arm that turns slower than commanded must not let the target wind up
        # (it would swing through the accumulated angle once free, and oscillate).
        _, turn = measured.delta_to(target)
        turn, clipped = clip_norm(turn, self._max_rotation_lag)
        self.counters[LAG_CLIPPED] += clipped
        orientation = measured.moved(np.zeros(3), turn).orientation if clipped else target.orientation
        return Pose(position, orientation)

    # -- the tick ------------------------------------------------------------------------------

    def step(self, command: DeltaCommand | None, measured: Pose) -> SafetyOutput:
        """Filter the newest command of this tick (None if none arrived) against the measured pose."""
        if self._target is None:
            raise RuntimeError("SafetyFilter.step before reset(): the measured pose is needed first")
        if self._estop_reason is not None:
            if command is not None:
                self.counters[ESTOP_REJECTED] += 1
            return SafetyOutput(Decision.ESTOP, self._target, self._gripper)
        if command is not None and not command.is_finite():
            self.counters[NONFINITE] += 1
            command = None
        if command is None:
            # A held target follows an arm that is carried away (a push, an overshoot, a
            # simulator's IK swinging the wrist): the arm is never sent back further than the lag.
            self._target = self._within_lag(self._target, measured)
            self._idle_ticks += 1
            if self._idle_ticks >= self.limits.command_timeout_ticks:
                if self._idle_ticks == self.limits.command_timeout_ticks:
                    self.counters[TIMEOUTS] += 1
                return SafetyOutput(Decision.HOLD, self._target, self._gripper)
            return SafetyOutput(Decision.MOVE, self._target, self._gripper)
        self._idle_ticks = 0

        translation, clipped = clip_norm(command.translation, self.limits.max_translation_step)
        self.counters[TRANSLATION_CLIPPED] += clipped
        rotation, clipped = clip_norm(command.rotation, self.limits.max_rotation_step)
        self.counters[ROTATION_CLIPPED] += clipped

        moved = self._target.moved(translation, rotation)
        position = np.clip(moved.position, self._low, self._high)
        self.counters[WORKSPACE_CLIPPED] += bool(np.any(position != moved.position))
        self._target = self._within_lag(Pose(position, moved.orientation), measured)

        gripper = float(np.clip(command.gripper, self.limits.gripper_min, self.limits.gripper_max))
        self.counters[GRIPPER_CLIPPED] += gripper != command.gripper
        self._gripper = gripper
        return SafetyOutput(Decision.MOVE, self._target, gripper, accepted=True)
