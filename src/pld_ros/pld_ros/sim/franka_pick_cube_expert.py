"""A scripted expert for franka_pick_cube on the simulated world's privileged cube pose.

It acts like a policy: every 20 Hz tick it reads the measured TCP pose and gripper closure and
answers one action in the project's convention (:mod:`pld_ros.core.observation`: translation m,
axis-angle rad, base frame, absolute gripper closure), kept within the profile's step limits. It
decides from where the cube and the hand are, not from a clock, so it starts from any pose and
tries again after a miss:

* *approach*: open, rise if low, travel to a point above the cube with the hand pointing down and
  turned to the cube's yaw (the quarter turn nearest the hand's heading at the start);
* *descend*: straight down to the grasp height;
* *close*: close the fingers there until they stop on the cube (closure about 0.5 on the 4 cm
  cube with the 8 cm hand);
* *lift*: rise with the fingers closed to the lift height and stay there.

Closed on nothing (closure near 1), it opens and starts over. The only memory is the per-episode
grasp offset drawn by :meth:`FrankaPickCubeExpert.reset` and which of the cube's
four faces it grasps (see :class:`ExpertConfig`).

Noise, to make demonstrations varied rather than all alike: Gaussian noise on every tick's
translation and rotation, and a per-episode offset of the grasp point. Neither changes the
gripper command. With the noise of the shipped demonstrations (``scripts/train_sim_models.sh``)
it lifted the cube in 44 of 44 episodes (seeds 0-44; one more was cut short by an arm fault), in
50-100 ticks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pld_ros.core.observation import ACTION_DIM, GRIPPER, Float32Array
from pld_ros.core.spatial import FloatArray, Pose, quat_from_rotvec, quat_multiply, rotation_angle_between
from pld_ros.sim.franka_pick_cube import CUBE_HALF_SIZE

DOWN = np.array([1.0, 0.0, 0.0, 0.0])
"""The hand pointing straight down, fingers closing along the base's y axis (the FR3's home pose)."""
OPEN = 0.0
CLOSED = 1.0
QUARTER = math.pi / 2
"""A cube looks the same every quarter turn."""


@dataclass(frozen=True)
class ExpertConfig:
    """Hyperparameters of :class:`FrankaPickCubeExpert` (metres, radians, per 20 Hz tick)."""

    max_translation: float = 0.015
    """Largest translation per tick; below the profile's 0.02 m step limit."""
    max_rotation: float = 0.03
    """Largest rotation per tick; below the profile's 0.1 rad step limit."""
    gain: float = 0.5
    """Fraction of the remaining error asked for per tick. The arm lags its target by a tick or
    two and each action is applied one tick after it was computed, so a full step would overshoot."""
    approach_height: float = 0.07
    """Height of the TCP above the cube's centre from where it descends."""
    grasp_depth: float = 0.0
    """How far below the cube's centre the TCP closes. The profile's workspace floor (2 cm, the
    cube's centre) stops it there anyway."""
    grasp_tolerance: float = 0.008
    """Height above the grasp point within which the fingers close (they hold the cube's top
    half well)."""
    lift_height: float = 0.15
    """TCP height the cube is lifted to (the cube then sits about 13 cm above the table)."""
    tolerance: float = 0.008
    """Lateral distance within which the hand, at the approach height, starts its descent (it
    keeps correcting on the way down). Tighter made the expert hover above the cube correcting
    its own noise, and a policy cloned from it hovered too."""
    yaw_tolerance: float = 0.1
    """Orientation error within which the hand, at the approach height, starts its descent."""
    abort_tolerance: float = 0.015
    """Lateral distance beyond which a descending hand rises and aligns again (wider than
    ``tolerance``, so that noise on the way down does not send it back up every time)."""
    abort_yaw_tolerance: float = 0.2
    """Orientation error beyond which a descending hand rises and aligns again."""
    held_closure: float = 0.42
    """Measured closure from which the fingers count as closed on the cube (0.5 on a 4 cm cube)."""
    missed_closure: float = 0.85
    """Measured closure beyond which the fingers closed on nothing."""
    translation_noise: float = 0.0
    """Standard deviation of Gaussian noise added to each tick's translation, m (0: none)."""
    rotation_noise: float = 0.0
    """Standard deviation of Gaussian noise added to each tick's rotation, rad per axis (0: none)."""
    grasp_offset: float = 0.0
    """Standard deviation of a per-episode lateral offset of the grasp point, m (0: none). An
    offset of more than about 1.5 cm across the fingers or 2 cm along them makes a grasp fail."""

    def __post_init__(self) -> None:
        for name in (
            "max_translation",
            "max_rotation",
            "gain",
            "tolerance",
            "yaw_tolerance",
            "grasp_tolerance",
        ):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.abort_tolerance < self.tolerance or self.abort_yaw_tolerance < self.yaw_tolerance:
            raise ValueError("the abort tolerances must not be tighter than the descent tolerances")
        for name in ("translation_noise", "rotation_noise", "grasp_offset"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0.0 < self.held_closure < self.missed_closure < 1.0:
            raise ValueError("need 0 < held_closure < missed_closure < 1")


def heading(orientation: FloatArray) -> float:
    """Yaw (rad) of an orientation's x axis projected on the base's xy plane."""
    x, y, z, w = orientation
    return math.atan2(2 * (x * y + w * z), 1 - 2 * (y * y + z * z))


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


class FrankaPickCubeExpert:
    """Privileged scripted policy; call :meth:`reset` per episode and :meth:`act` once per tick.

    ``cube_pose`` answers the cube's current pose in the base frame (e.g.
    ``FrankaPickCubeWorld.cube_pose``); ``seed`` seeds the noise.
    """

    def __init__(
        self, cube_pose: Callable[[], Pose], config: ExpertConfig | None = None, *, seed: int | None = None
    ) -> None:
        self._cube_pose = cube_pose
        self.config = config or ExpertConfig()
        self._rng = np.random.default_rng(seed)
        self._offset = np.zeros(2)
        self._quarters: int | None = None
        self._start_heading = 0.0
        self.reset()

    def reset(self) -> None:
        """Start a new episode: draw this episode's grasp offset, forget the grasp heading."""
        self._quarters = None
        self._offset = (
            self._rng.normal(0.0, self.config.grasp_offset, 2) if self.config.grasp_offset else np.zeros(2)
        )

    def act(self, tcp: Pose, gripper_closure: float) -> Float32Array:
        """The action for this tick from the measured TCP pose and gripper closure."""
        if self._quarters is None:
            self._start_heading = heading(tcp.orientation)
        target, gripper = self._target(tcp, gripper_closure)
        cfg = self.config
        translation, rotation = tcp.delta_to(target)
        translation = _clip(cfg.gain * translation, cfg.max_translation)
        rotation = _clip(cfg.gain * rotation, cfg.max_rotation)
        if cfg.translation_noise:
            translation = translation + self._rng.normal(0.0, cfg.translation_noise, 3)
        if cfg.rotation_noise:
            rotation = rotation + self._rng.normal(0.0, cfg.rotation_noise, 3)
        action = np.zeros(ACTION_DIM, dtype=np.float32)
        action[:3] = _clip(translation, cfg.max_translation)
        action[3:6] = _clip(rotation, cfg.max_rotation)
        action[GRIPPER] = gripper
        return action

    def _target(self, tcp: Pose, closure: float) -> tuple[Pose, float]:
        cfg = self.config
        grasp = self._grasp_pose(self._cube_pose())
        lateral = float(np.linalg.norm(tcp.position[:2] - grasp.position[:2]))
        angle = rotation_angle_between(tcp.orientation, grasp.orientation)
        above = Pose(grasp.position + np.array([0.0, 0.0, cfg.approach_height]), grasp.orientation)
        high = tcp.position[2] >= above.position[2] - cfg.tolerance
        if closure >= cfg.missed_closure:
            # Closed on nothing (or the cube slipped out): open, back up, start over.
            up = np.array([*tcp.position[:2], max(tcp.position[2], above.position[2])])
            return Pose(up, tcp.orientation), OPEN
        if closure >= cfg.held_closure and lateral < CUBE_HALF_SIZE:
            return Pose(np.array([*grasp.position[:2], cfg.lift_height]), grasp.orientation), CLOSED
        if lateral > cfg.abort_tolerance or angle > cfg.abort_yaw_tolerance:
            # Far off: rise before travelling, so the fingers do not sweep the cube away.
            if not high:
                return Pose(np.array([*tcp.position[:2], above.position[2]]), grasp.orientation), OPEN
            return above, OPEN
        if high and (lateral > cfg.tolerance or angle > cfg.yaw_tolerance):
            return above, OPEN
        if tcp.position[2] <= grasp.position[2] + cfg.grasp_tolerance:
            return grasp, CLOSED
        if closure > 0.1:
            # Descend only with the fingers open, or they would land on the cube.
            return Pose(tcp.position, grasp.orientation), OPEN
        return grasp, OPEN

    def _grasp_pose(self, cube: Pose) -> Pose:
        """Top-down TCP pose closing the fingers on two opposite faces of the cube, turned the
        quarter turn nearest the hand's heading at the episode's first tick. The choice is then
        kept: made anew every tick it flips when the turning hand overshoots past 45 degrees (or
        the cube turns past it), and the hand oscillates."""
        cube_yaw = heading(cube.orientation)
        if self._quarters is None:
            self._quarters = round(_wrap(self._start_heading - cube_yaw) / QUARTER)
        yaw = cube_yaw + QUARTER * self._quarters
        orientation = quat_multiply(quat_from_rotvec(np.array([0.0, 0.0, yaw])), DOWN)
        position = np.array([*(cube.position[:2] + self._offset), cube.position[2] - self.config.grasp_depth])
        return Pose(position, orientation)


def _clip(vector: FloatArray, limit: float) -> FloatArray:
    norm = float(np.linalg.norm(vector))
    return vector if norm <= limit else vector * (limit / norm)
