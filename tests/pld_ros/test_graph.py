from __future__ import annotations

from pathlib import Path

import pytest

from pld_ros.executables import NODE_EXECUTABLES
from pld_ros.graph import build_graph
from pld_ros.profile import load_profile
from tests.conftest import CONFIG_DIR, FIXTURES


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_profile_builds_a_graph_of_known_executables(path: Path) -> None:
    graph = build_graph(load_profile(path), path)
    assert graph.nodes
    for node in graph.nodes:
        if node.package == "pld_ros":
            assert node.executable in NODE_EXECUTABLES


def test_extra_nodes_join_the_graph_and_the_monitor_watches_them() -> None:
    path = FIXTURES / "profiles" / "two_nodes_sim.yaml"
    graph = build_graph(load_profile(path, sim=True), path)
    assert [n.name for n in graph.nodes] == ["health_monitor", "talker"]
    assert graph.node("talker").parameters == {"rate": 10.0}
    assert graph.node("health_monitor").parameters["expected"] == ["/talker"]
    assert not graph.node("talker").respawn


def test_clashing_node_names_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "clash.yaml"
    path.write_text("name: c\nrobot_id: r\nextra_nodes:\n  - {name: health_monitor, executable: heartbeat}\n")
    with pytest.raises(ValueError, match="node names clash: /health_monitor"):
        build_graph(load_profile(path), path)


def test_unknown_node_lookup_names_the_profile() -> None:
    path = FIXTURES / "profiles" / "two_nodes_sim.yaml"
    graph = build_graph(load_profile(path), path)
    with pytest.raises(KeyError, match="no node 'x' in the graph of profile 'two_nodes'"):
        graph.node("x")


def test_simulated_franka_graph_hosts_the_world_and_drives_it_through_the_arm_driver() -> None:
    sim = build_graph(load_profile("franka_pick_cube", sim=True, config_dir=CONFIG_DIR), Path("/p.yaml"))
    episode_layer = ["base_policy", "residual_policy", "reward_classifier", "replay_buffer", "supervisor"]
    assert [n.name for n in sim.nodes] == ["health_monitor", "sim_world", "arm_driver", *episode_layer]
    assert sim.node("arm_driver").parameters == {"profile": "/p.yaml", "arm": "arm"}
    assert sim.node("health_monitor").parameters["expected"] == [
        "/sim_world",
        "/arm_driver",
        *(f"/{name}" for name in episode_layer),
    ]
    real = build_graph(load_profile("franka_pick_cube", config_dir=CONFIG_DIR), Path("/p.yaml"))
    assert "sim_world" not in [n.name for n in real.nodes]


def test_a_local_trainer_joins_the_graph_only_when_the_profile_asks() -> None:
    profile = load_profile("franka_pick_cube", sim=True, config_dir=CONFIG_DIR)
    assert "trainer" not in [n.name for n in build_graph(profile, Path("/p.yaml")).nodes]
    local = profile.model_copy(update={"trainer": profile.trainer.model_copy(update={"in_graph": True})})
    graph = build_graph(local, Path("/p.yaml"))
    assert graph.node("trainer").parameters == {"profile": "/p.yaml"}


def test_an_external_simulator_is_connected_to_not_hosted() -> None:
    path = FIXTURES / "profiles" / "franka_arm_sim.yaml"
    graph = build_graph(load_profile(path, sim=True), path)
    assert [n.name for n in graph.nodes] == ["health_monitor", "arm_driver"]


def test_two_arms_get_one_driver_each() -> None:
    graph = build_graph(load_profile("yam_gpu_insertion", config_dir=CONFIG_DIR), Path("/p.yaml"))
    drivers = [n.name for n in graph.nodes if n.executable == "arm_driver"]
    assert drivers == ["left_driver", "right_driver"]
    assert graph.node("right_driver").parameters["arm"] == "right"


def test_simulated_yam_graph_hosts_the_world_and_runs_episodes_in_it() -> None:
    sim = build_graph(load_profile("yam_gpu_insertion", sim=True, config_dir=CONFIG_DIR), Path("/p.yaml"))
    episode_layer = ["base_policy", "residual_policy", "reward_classifier", "replay_buffer", "supervisor"]
    assert [n.name for n in sim.nodes] == [
        "health_monitor",
        "sim_world",
        "left_driver",
        "right_driver",
        *episode_layer,
    ]
    assert sim.node("sim_world").parameters == {"profile": "/p.yaml"}
    expected = sim.node("health_monitor").parameters["expected"]
    assert isinstance(expected, list) and "/sim_world" in expected
    # Its cameras are rendered by the world: no camera node.
    assert not [n for n in sim.nodes if n.executable == "camera"]


def test_real_cameras_get_a_node_each_and_simulated_ones_none() -> None:
    real = build_graph(load_profile("franka_pick_cube", config_dir=CONFIG_DIR), Path("/p.yaml"))
    assert [n.name for n in real.nodes][:4] == ["health_monitor", "arm_driver", "wrist_camera", "side_camera"]
    assert real.node("side_camera").parameters == {"profile": "/p.yaml", "camera": "side"}
    sim = build_graph(load_profile("franka_pick_cube", sim=True, config_dir=CONFIG_DIR), Path("/p.yaml"))
    assert not [n for n in sim.nodes if n.executable == "camera"]


def test_the_supervisor_ends_the_run_and_takes_the_episode_count_override() -> None:
    profile = load_profile("franka_pick_cube", sim=True, config_dir=CONFIG_DIR)
    default = build_graph(profile, Path("/p.yaml")).node("supervisor")
    assert default.ends_run and "episodes" not in default.parameters
    # The residual policy only speaks within episodes: its heartbeat shows it is up; an episode
    # the replay buffer never saw would be lost.
    assert default.parameters["requires"] == ["/residual_policy", "/replay_buffer"]
    assert build_graph(profile, Path("/p.yaml"), episodes=3).node("supervisor").parameters["episodes"] == 3


def test_the_recorder_joins_the_graph_when_recording_is_on_and_is_respawned() -> None:
    profile = load_profile("franka_pick_cube", sim=True, config_dir=CONFIG_DIR)
    assert "recorder" not in [n.name for n in build_graph(profile, Path("/p.yaml")).nodes]
    recording = profile.model_copy(
        update={"recording": profile.recording.model_copy(update={"enabled": True})}
    )
    graph = build_graph(recording, Path("/p.yaml"))
    recorder = graph.node("recorder")
    assert recorder.respawn and recorder.parameters == {"profile": "/p.yaml"}
    expected = graph.node("health_monitor").parameters["expected"]
    assert isinstance(expected, list) and "/recorder" in expected
