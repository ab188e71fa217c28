"""robosuite's Lift with a Panda, as the benchmark's environment: flat state, sparse reward, seeds.

robosuite is imported when a :class:`LiftEnv` is built, not with this module: it lives only in
the benchmark's venv (``scripts/bootstrap_robosuite.sh``), while the state layout below, the
expert and the BC code also import (and are tested) in the main venv.

- Control: 20 Hz, robosuite's default BASIC composite controller, whose arm part is OSC_POSE with
  delta inputs. Action (7, in [-1, 1]): ``dx dy dz`` (1.0 = 5 cm per step), ``drx dry drz``
  (axis-angle, 1.0 = 0.5 rad per step), gripper (-1 open, +1 close). Note the difference from the
  ROS stack's action convention (:mod:`pld_ros.core.observation`): normalized units and a
  signed gripper command, as robosuite defines them.
- State (:data:`STATE_DIM` float32, layout :data:`STATE_LAYOUT`): the end-effector position and
  orientation, the two finger joints, the cube's position and orientation and the cube's position
  relative to the end effector, all in the world frame. Orientations are the first two columns
  of the rotation matrix rather than robosuite's quaternion: with the hand pointing down the
  quaternion's ``w`` is about 0 and its sign flips between steps, the matrix is continuous.
  Left out: joint positions and velocities (the end-effector pose determines the arm's posture
  here) and the gripper's velocity.
- Reward: 1 on the step the cube is lifted (robosuite's ``_check_success``: cube 4 cm above the
  table), else 0; the episode terminates on success or is truncated after
  :attr:`LiftConfig.horizon` steps.
- Reset: ``hard_reset=False`` (the MuJoCo model is built once; a reset takes about 2 ms). The cube
  is placed by robosuite's sampler (+-3 cm in x and y, any yaw); :meth:`LiftEnv.reset` reseeds the
  environment's generator, so one seed gives one initial state.
- Images (``LiftConfig.images``): ``agentview`` (side) and ``robot0_eye_in_hand`` (wrist),
  ``image_size`` square, rendered on the CPU (EGL) with shadows, reflections and multisampling
  off (about 3x faster, ENVIRONMENT.md), rows flipped to the usual top-down order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pld_ros.core.observation import ACTION_DIM, Float32Array
from pld_ros.core.spatial import quat_to_matrix

STATE_LAYOUT: dict[str, slice] = {
    "eef_pos": slice(0, 3),
    "eef_rot6": slice(3, 9),
    "gripper_qpos": slice(9, 11),
    "cube_pos": slice(11, 14),
    "cube_rot6": slice(14, 20),
    "cube_from_eef": slice(20, 23),
}
"""Where each quantity sits in the state vector. ``eef_pos`` (m, world frame; robosuite's
``robot0_eef_pos``), ``eef_rot6`` (first two columns of the end effector's rotation matrix, from
``robot0_eef_quat``), ``gripper_qpos`` (the two finger joints, m: about +-0.04 open, +-0.0 closed;
``robot0_gripper_qpos``), ``cube_pos`` (m, ``cube_pos``), ``cube_rot6`` (from ``cube_quat``),
``cube_from_eef`` (``cube_pos - eef_pos``, robosuite's ``gripper_to_cube_pos``)."""
STATE_DIM = 23
CAMERAS = ("agentview", "robot0_eye_in_hand")
"""Side and wrist camera, the order of :attr:`Step.views`."""


@dataclass(frozen=True)
class LiftConfig:
    """Settings of :class:`LiftEnv`."""

    horizon: int = 100
    """Steps before truncation: 5 s at 20 Hz (our choice). The scripted expert lifts in 30-40
    steps, so a policy has about 2.5 times the expert's time (a retry is possible)."""
    control_freq: int = 20
    """Policy steps per second (PLD's rate on the real arms)."""
    images: bool = False
    """Render the two cameras (:data:`CAMERAS`) at each step."""
    image_size: int = 128
    """Height and width of each view, pixels (the ResNet-10 input of the ROS stack)."""


@dataclass(frozen=True)
class Step:
    """What one environment step returns (and :meth:`LiftEnv.reset`, with zero reward)."""

    state: Float32Array
    """STATE_DIM float32, :data:`STATE_LAYOUT`."""
    reward: float
    """1.0 on success, else 0.0."""
    terminated: bool
    """The cube is lifted: the episode ends with success."""
    truncated: bool
    """The horizon is reached without success."""
    views: npt.NDArray[np.uint8] | None = None
    """``[2, H, W, 3]`` uint8, :data:`CAMERAS` order, when images are on."""

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


def rot6(quat_xyzw: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """First two columns of the rotation matrix of an x, y, z, w quaternion (either sign), flattened."""
    matrix = quat_to_matrix(np.asarray(quat_xyzw, dtype=np.float64))
    return np.concatenate([matrix[:, 0], matrix[:, 1]])


def state_vector(obs: dict[str, Any]) -> Float32Array:
    """The :data:`STATE_LAYOUT` vector of a robosuite Lift observation dictionary."""
    eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
    cube = np.asarray(obs["cube_pos"], dtype=np.float64)
    state = np.concatenate(
        [
            eef,
            rot6(obs["robot0_eef_quat"]),
            np.asarray(obs["robot0_gripper_qpos"], dtype=np.float64),
            cube,
            rot6(obs["cube_quat"]),
            cube - eef,
        ]
    ).astype(np.float32)
    assert state.shape == (STATE_DIM,)
    return state


class LiftEnv:
    """robosuite Lift/Panda behind a small reset/step interface (see the module docstring)."""

    def __init__(self, config: LiftConfig | None = None) -> None:
        self.config = config or LiftConfig()
        # robosuite picks its GL backend when it first imports mujoco; EGL is the headless one here.
        os.environ.setdefault("MUJOCO_GL", "egl")
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
        import robosuite

        images = self.config.images
        size = self.config.image_size
        self._env: Any = robosuite.make(
            "Lift",
            robots="Panda",
            control_freq=self.config.control_freq,
            horizon=self.config.horizon,
            hard_reset=False,
            reward_shaping=False,
            has_renderer=False,
            has_offscreen_renderer=images,
            use_camera_obs=images,
            camera_names=list(CAMERAS),
            camera_heights=size,
            camera_widths=size,
            seed=0,
        )
        if images:
            self._fast_rendering()
        low, high = self._env.action_spec
        assert len(low) == ACTION_DIM and np.allclose(low, -1.0) and np.allclose(high, 1.0)
        self._steps = 0
        self._done = True

    def reset(self, seed: int) -> Step:
        """Start an episode whose initial state depends on ``seed`` alone."""
        # Placement and robot init sample from env.rng, an object the sampler also holds:
        # reseed it in place rather than replacing it.
        self._env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        obs = self._env.reset()
        self._steps = 0
        self._done = False
        return Step(state_vector(obs), 0.0, False, False, self._views(obs))

    def step(self, action: npt.ArrayLike) -> Step:
        """Apply one action (clipped to [-1, 1]); the episode must not be over."""
        if self._done:
            raise RuntimeError("the episode is over: reset first")
        command = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        if command.shape != (ACTION_DIM,) or not np.all(np.isfinite(command)):
            raise ValueError(f"need {ACTION_DIM} finite numbers, got {action!r}")
        obs, _, _, _ = self._env.step(command)
        self._steps += 1
        success = self.success()
        truncated = not success and self._steps >= self.config.horizon
        self._done = success or truncated
        return Step(state_vector(obs), float(success), success, truncated, self._views(obs))

    def success(self) -> bool:
        """The cube is lifted (robosuite's own check)."""
        return bool(self._env._check_success())

    def close(self) -> None:
        self._env.close()

    def _views(self, obs: dict[str, Any]) -> npt.NDArray[np.uint8] | None:
        if not self.config.images:
            return None
        # MuJoCo's offscreen buffer is bottom-up.
        return np.stack([obs[f"{name}_image"][::-1] for name in CAMERAS]).astype(np.uint8)

    def _fast_rendering(self) -> None:
        import mujoco

        context = self._env.sim._render_context_offscreen
        context.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        context.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        # Multisampling is fixed when the GL context's buffers are made: remake them without it,
        # at the views' size.
        context.model.vis.quality.offsamples = 0
        context.model.vis.global_.offwidth = self.config.image_size
        context.model.vis.global_.offheight = self.config.image_size
        context.con.free()
        context._set_mujoco_context_and_buffers()
