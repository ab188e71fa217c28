"""The simulated-episode helpers shared by ``pld train`` and ``pld reward collect``: which profiles
host their world (the shipped profile files; no simulator is started), and what they raise."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NoReturn

import pytest

from pld_ros.profile import FrankyArm
from pld_ros.training.sim_episodes import SimEpisodeError, run_sim_episodes, sim_profile


def test_the_franka_pick_cube_profile_gives_its_arm_and_views() -> None:
    profile, arm, views = sim_profile("franka_pick_cube")
    assert profile.simulation is not None and profile.simulation.world == "franka_pick_cube"
    assert profile.policies is not None and views == profile.policies.base.views
    assert isinstance(arm, FrankyArm) and arm is profile.arms["arm"]


def test_a_profile_without_the_world_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(SimEpisodeError, match=r"^yam_gpu_insertion: the simulated variant does not host"):
        sim_profile("yam_gpu_insertion")
    missing = tmp_path / "missing.yaml"
    with pytest.raises(SimEpisodeError, match=re.escape(str(missing))):
        sim_profile(str(missing))
    # The episodes check the profile before any world starts; no policy is asked for.
    with pytest.raises(SimEpisodeError, match="does not host the franka_pick_cube world"):
        run_sim_episodes("yam_gpu_insertion", "127.0.0.62", 0, [0], not_called, not_called)


def not_called(*_: object) -> NoReturn:
    raise AssertionError("no episode should run")
