"""A scripted grasp-and-lift policy for Lift, with noise: the source of the BC demonstrations.

A proportional controller on the state vector (:data:`~bench.robosuite_lift.env.STATE_LAYOUT`)
through four phases: move above the cube, descend to it, close the gripper, lift. Orientation is
left alone (the hand starts pointing down and the open Panda gripper, 8 cm, spans the cube's
diagonal, about 6 cm, at any yaw). Noise makes the demonstrations imperfect the way a human's are:
each episode aims at a point offset from the cube's centre (:attr:`ExpertConfig.grasp_offset_std`)
and every arm command gets Gaussian noise (:attr:`ExpertConfig.action_noise_std`).

No robosuite here: it runs on state vectors, so it imports (and is tested) in any venv.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from pld_ros.core.observation import ACTION_DIM, Float32Array

from .env import STATE_LAYOUT

MAX_STEP = 0.05
"""Metres moved per step by a translation action of 1.0 (robosuite's OSC_POSE output limit)."""
OPEN, CLOSE = -1.0, 1.0
"""Gripper commands."""


class Phase(enum.IntEnum):
    APPROACH = 0
    DESCEND = 1
    GRASP = 2
    LIFT = 3


@dataclass(frozen=True)
class ExpertConfig:
    """Gains, waypoints and noise of :class:`ScriptedExpert` (all our choice, tuned by hand on
    Lift/Panda at 20 Hz: 100 % success without noise)."""

    gain: float = 0.7
    """Fraction of the position error commanded per step (1.0 would aim to close it in one step;
    the OSC controller lags, so more overshoots)."""
    max_action: float = 0.6
    """Largest translation command per axis (0.6 = 3 cm per step)."""
    hover_height: float = 0.08
    """Height above the cube's centre of the approach waypoint, m."""
    grasp_depth: float = 0.0
    """Height of the grasp point relative to the cube's centre, m (0: fingertips at mid-height)."""
    xy_tolerance: float = 0.01
    """Horizontal error below which the approach ends and the descent starts, m."""
    z_tolerance: float = 0.01
    """Vertical error below which the descent ends and the gripper closes, m."""
    close_steps: int = 8
    """Steps spent closing the gripper before lifting (the fingers need about 0.3 s)."""
    lift_height: float = 0.15
    """Height above the grasp point the lift aims for, m (success needs 4 cm)."""
    action_noise_std: float = 0.0
    """Standard deviation of the Gaussian noise on each translation and rotation command (action
    units, 1.0 = 5 cm or 0.5 rad)."""
    grasp_offset_std: float = 0.0
    """Standard deviation of the per-episode horizontal offset of the grasp point from the cube's
    centre, m, per axis."""

    def __post_init__(self) -> None:
        if self.gain <= 0.0 or not 0.0 < self.max_action <= 1.0:
            raise ValueError("gain must be positive and max_action in (0, 1]")
        if self.action_noise_std < 0.0 or self.grasp_offset_std < 0.0:
            raise ValueError("noise standard deviations must not be negative")
        if self.close_steps <= 0:
            raise ValueError("close_steps must be positive")


class ScriptedExpert:
    """``act(state, t)`` -> 7-D action; ``t == 0`` starts a new episode (new phase, new offset).

    Deterministic given the generator: the same seed and states give the same actions.
    """

    def __init__(self, config: ExpertConfig, rng: np.random.Generator) -> None:
        self.config = config
        self._rng = rng
        self.phase = Phase.APPROACH
        self._offset = np.zeros(3)
        self._grasp_point = np.zeros(3)
        self._closing = 0

    def act(self, state: Float32Array, t: int) -> Float32Array:
        config = self.config
        if t == 0:
            self.phase = Phase.APPROACH
            self._closing = 0
            self._offset = np.zeros(3)
            self._offset[:2] = self._rng.normal(0.0, config.grasp_offset_std, 2)
        eef = state[STATE_LAYOUT["eef_pos"]].astype(np.float64)
        cube = state[STATE_LAYOUT["cube_pos"]].astype(np.float64)
        grasp = cube + self._offset + np.array([0.0, 0.0, config.grasp_depth])
        gripper = OPEN
        if self.phase is Phase.APPROACH:
            target = grasp + np.array([0.0, 0.0, config.hover_height])
            error = target - eef
            if np.linalg.norm(error[:2]) < config.xy_tolerance:
                self.phase = Phase.DESCEND
        if self.phase is Phase.DESCEND:
            target = grasp
            error = target - eef
            if abs(error[2]) < config.z_tolerance:
                self.phase = Phase.GRASP
                self._grasp_point = eef.copy()
        if self.phase is Phase.GRASP:
            target, gripper = self._grasp_point, CLOSE
            self._closing += 1
            if self._closing > config.close_steps:
                self.phase = Phase.LIFT
        if self.phase is Phase.LIFT:
            target, gripper = self._grasp_point + np.array([0.0, 0.0, config.lift_height]), CLOSE
        return self._command(target - eef, gripper)

    def _command(self, error: np.ndarray, gripper: float) -> Float32Array:
        config = self.config
        action = np.zeros(ACTION_DIM)
        action[:3] = np.clip(config.gain * error / MAX_STEP, -config.max_action, config.max_action)
        if config.action_noise_std > 0.0:
            action[:6] += self._rng.normal(0.0, config.action_noise_std, 6)
        action[6] = gripper
        return np.clip(action, -1.0, 1.0).astype(np.float32)
