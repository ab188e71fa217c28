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
