from __future__ import annotations

import numpy as np

from bench.robosuite_lift.env import STATE_DIM, STATE_LAYOUT, rot6
from bench.robosuite_lift.expert import MAX_STEP, ExpertConfig, Phase, ScriptedExpert
from pld_ros.core.observation import Float32Array

TABLE = 0.8
"""Table height of the toy world, m (robosuite's Lift table top)."""


class PointMassLift:
    """A kinematic stand-in for Lift: the hand moves half the commanded step (the OSC lags), the
    fingers close 1 cm per step, and the cube follows the hand once the closed fingers hold it."""

    def __init__(self, cube_xy: tuple[float, float]) -> None:
        self.eef = np.array([-0.1, 0.0, 1.0])
        self.cube = np.array([*cube_xy, TABLE + 0.02])
        self.fingers = 0.04
        self.held = False

    def state(self) -> Float32Array:
        state = np.zeros(STATE_DIM)
        state[STATE_LAYOUT["eef_pos"]] = self.eef
        state[STATE_LAYOUT["eef_rot6"]] = rot6([1.0, 0.0, 0.0, 0.0])
        state[STATE_LAYOUT["gripper_qpos"]] = [self.fingers, -self.fingers]
        state[STATE_LAYOUT["cube_pos"]] = self.cube
        state[STATE_LAYOUT["cube_rot6"]] = rot6([0.0, 0.0, 0.0, 1.0])
        state[STATE_LAYOUT["cube_from_eef"]] = self.cube - self.eef
        return state.astype(np.float32)

    def step(self, action: Float32Array) -> None:
        self.eef = self.eef + 0.5 * MAX_STEP * action[:3]
        self.eef[2] = max(self.eef[2], TABLE + 0.01)
        closing = action[6] > 0
        self.fingers = float(np.clip(self.fingers + (-0.01 if closing else 0.01), 0.02, 0.04))
        near = np.linalg.norm(self.eef - self.cube) < 0.015
        self.held = bool(closing and self.fingers <= 0.02 and (self.held or near))
        if self.held:
            self.cube = self.eef.copy()

    def lifted(self) -> bool:
        return bool(self.cube[2] > TABLE + 0.06)


def run(expert: ScriptedExpert, world: PointMassLift, steps: int = 100) -> list[Phase]:
    phases = []
    for t in range(steps):
        world.step(expert.act(world.state(), t))
        phases.append(expert.phase)
        if world.lifted():
            break
    return phases


def test_the_noiseless_expert_approaches_descends_grasps_and_lifts_the_cube() -> None:
    world = PointMassLift(cube_xy=(0.03, -0.02))
    phases = run(ScriptedExpert(ExpertConfig(), np.random.default_rng(0)), world)
    assert world.lifted()
    assert sorted(set(phases)) == list(Phase)
    assert phases == sorted(phases), "phases never go back"


def test_a_large_grasp_offset_misses_the_cube() -> None:
    world = PointMassLift(cube_xy=(0.0, 0.0))
    run(ScriptedExpert(ExpertConfig(grasp_offset_std=0.05), np.random.default_rng(3)), world)
    assert not world.lifted()


def test_actions_stay_in_range_and_repeat_with_the_seed_while_noise_changes_them() -> None:
    config = ExpertConfig(action_noise_std=0.3, grasp_offset_std=0.01)
    states = [PointMassLift(cube_xy=(0.02 * i, 0.0)).state() for i in range(5)]
    first = [ScriptedExpert(config, np.random.default_rng(7)).act(s, 0) for s in states]
    again = [ScriptedExpert(config, np.random.default_rng(7)).act(s, 0) for s in states]
    quiet = [ScriptedExpert(ExpertConfig(), np.random.default_rng(7)).act(s, 0) for s in states]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(first, quiet, strict=True))
    assert all(a.dtype == np.float32 and np.all(np.abs(a) <= 1.0) for a in first)
