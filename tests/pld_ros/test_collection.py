from __future__ import annotations

from pathlib import Path

import pytest

from pld_ros.collection import write_collection_profile
from pld_ros.graph import build_graph
from pld_ros.profile import ProfileError, default_config_dir, resolve_profile_path


def test_a_collection_run_fixes_the_specialist_and_stops_at_its_success_count(tmp_path: Path) -> None:
    weights = tmp_path / "specialist.safetensors"
    weights.write_bytes(b"weights")
    source = resolve_profile_path("franka_pick_cube", sim=True)
    path, profile = write_collection_profile(source, weights, 200, tmp_path / "runs", "collect", 25)
    assert path.is_file() and path.parent == tmp_path / "runs"
    supervisor = profile.supervisor
    assert (supervisor.mode, supervisor.warmup_episodes, supervisor.successes) == ("probe_takeover", 0, 200)
    assert profile.policies is not None
    assert profile.policies.residual.weights == weights.resolve()
    assert profile.policies.residual.max_probe_steps == 25
    assert profile.simulation is not None, "the overlay keeps everything else of the profile"
    graph = build_graph(profile, path)
    names = {spec.name for spec in graph.nodes}
    assert {"supervisor", "residual_policy", "replay_buffer", "sim_world"} <= names
    assert "trainer" not in names
    assert graph.node("supervisor").parameters["profile"] == str(path)


def test_missing_weights_or_a_bad_overlay_leave_nothing_behind(tmp_path: Path) -> None:
    source = default_config_dir() / "franka_pick_cube_sim.yaml"
    with pytest.raises(ProfileError, match="do not exist"):
        write_collection_profile(source, tmp_path / "none.safetensors", 10, tmp_path, "collect")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"w")
    with pytest.raises(ProfileError, match="max_probe_steps"):
        write_collection_profile(source, weights, 10, tmp_path / "runs", "collect", -1)
    assert not (tmp_path / "runs" / "collect.yaml").exists()
    with pytest.raises(ValueError, match="successes"):
        write_collection_profile(source, weights, 0, tmp_path, "collect")
