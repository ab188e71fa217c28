"""The scripted franka_pick_cube expert lifts the cube in the real simulated world.

It acts through the robot's control path (ArmController and its safety filter over franky and
franky-sim) via SimRollouts. The world binds franky-sim to 127.0.0.41.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pld_ros.core.spatial import Pose
from pld_ros.drivers.arm import ArmFault
from pld_ros.profile import FrankyArm, load_profile
from pld_ros.sim.franka_pick_cube import FrankaPickCubeWorld
from pld_ros.sim.franka_pick_cube_expert import ExpertConfig, FrankaPickCubeExpert, heading
from pld_ros.training.commands import expert_policy
from pld_ros.training.rollouts import Episode, RolloutConfig, SimRollouts

pytestmark = pytest.mark.sim_in_process

HOST = "127.0.0.41"
MAX_TICKS = 200
"""10 s at 20 Hz; the expert needs 60-120 ticks."""


@pytest.fixture(scope="module")
def arm(frozen_heap: None) -> FrankyArm:
    arm = load_profile("franka_pick_cube", sim=True).arms["arm"]
    assert isinstance(arm, FrankyArm)
    return arm


def lift(arm: FrankyArm, seed: int) -> Episode:
    """One expert episode without a fault. franky's motion planner fails now and then in the
    suite ("Motion planner failed", in the reset or in the episode: the arm faults, which is no
    verdict on the expert), so a fault ends the try, and the next starts from a fresh world with
    the next seed: up to three tries."""
    fault = ""
    for attempt in range(3):
        with (
            FrankaPickCubeWorld(HOST, seed=3 + attempt) as world,
            SimRollouts(
                world, arm, ("wrist", "side"), RolloutConfig(max_steps=MAX_TICKS, success_ticks=3)
            ) as rollouts,
        ):
            expert = FrankaPickCubeExpert(world.cube_pose, ExpertConfig())
            try:
                episode = rollouts.run_episode(expert_policy(expert), seed + attempt)
            except ArmFault as error:
                fault = str(error)
                continue
        if not episode.fault:
            return episode
        fault = episode.fault
    raise AssertionError(f"three tries faulted, the last: {fault}")


def test_expert_lifts_the_cube_through_the_arm_controller(arm: FrankyArm) -> None:
    episode = lift(arm, seed=11)
    assert episode.succeeded, f"not lifted in {MAX_TICKS} ticks"
    assert episode.success[-3:].all()
    limits = arm.safety
    steps = np.linalg.norm(episode.actions[:, :3], axis=1)
    assert steps.max() <= limits.max_translation_step
    assert np.linalg.norm(episode.actions[:, 3:6], axis=1).max() <= limits.max_rotation_step
    # It closed the hand on the cube: the gripper command went from open to closed.
    assert episode.actions[0, 6] == 0.0 and episode.actions[-1, 6] == 1.0


def test_noisy_expert_is_reproducible_in_its_noise_and_stays_within_limits() -> None:
    cube = Pose.of((0.5, 0.05, 0.02), (0.0, 0.0, math.sin(0.3), math.cos(0.3)))
    config = ExpertConfig(translation_noise=0.003, rotation_noise=0.02, grasp_offset=0.005)
    tcp = Pose.of((0.3, 0.0, 0.48), (1.0, 0.0, 0.0, 0.0))
    first = [FrankaPickCubeExpert(lambda: cube, config, seed=5).act(tcp, 0.0) for _ in range(2)]
    again = FrankaPickCubeExpert(lambda: cube, config, seed=5).act(tcp, 0.0)
    np.testing.assert_array_equal(first[0], again)
    assert not np.array_equal(first[0], FrankaPickCubeExpert(lambda: cube, config, seed=6).act(tcp, 0.0))
    assert np.linalg.norm(first[0][:3]) <= config.max_translation + 1e-6
    assert np.linalg.norm(first[0][3:6]) <= config.max_rotation + 1e-6


def test_expert_turns_to_the_nearest_face_and_keeps_it() -> None:
    yaw = 0.7  # 40 degrees: the nearest face from the home heading (0) is at 40 degrees
    cube = Pose.of((0.5, 0.0, 0.02), (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)))
    expert = FrankaPickCubeExpert(lambda: cube, ExpertConfig())
    tcp = Pose.of((0.5, 0.0, 0.2), (1.0, 0.0, 0.0, 0.0))
    assert expert.act(tcp, 0.0)[5] > 0.0  # turns positively about z, towards 40 degrees
    # Once turned past 45 degrees (an overshoot), it still aims at the face it chose.
    turned = Pose.of((0.5, 0.0, 0.2), (math.cos(0.4), math.sin(0.4), 0.0, 0.0))
    assert heading(turned.orientation) == pytest.approx(0.8)
    assert expert.act(turned, 0.0)[5] < 0.0


def test_expert_lifts_once_the_fingers_hold_and_reopens_after_a_miss() -> None:
    cube = Pose.of((0.5, 0.0, 0.02), (0.0, 0.0, 0.0, 1.0))
    expert = FrankaPickCubeExpert(lambda: cube, ExpertConfig())
    at_cube = Pose.of((0.5, 0.0, 0.02), (1.0, 0.0, 0.0, 0.0))
    closing = expert.act(at_cube, 0.2)
    assert closing[6] == 1.0 and abs(closing[2]) < 1e-3
    holding = expert.act(at_cube, 0.5)
    assert holding[6] == 1.0 and holding[2] > 0.005
    missed = expert.act(at_cube, 1.0)
    assert missed[6] == 0.0 and missed[2] > 0.005


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="translation_noise"):
        ExpertConfig(translation_noise=-0.1)
    with pytest.raises(ValueError, match="held_closure"):
        ExpertConfig(held_closure=0.9, missed_closure=0.8)
