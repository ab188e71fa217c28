"""`pld launch` end to end: real node processes talking over DDS, stopped by signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from tests.processes import Watched

TWO_NODES = FIXTURES / "profiles" / "two_nodes_sim.yaml"
PLD = (sys.executable, "-m", "pld_ros.cli")

pytestmark = pytest.mark.ros


def pld(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PLD, *args], capture_output=True, text=True, timeout=60, check=False)


def started_pids(run: Watched, *names: str) -> dict[str, int]:
    return {name: int(run.wait_for(rf"started '{name}' \(pid (\d+)\)").group(1)) for name in names}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; the launcher reaps its children.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_help_reads_well() -> None:
    result = pld("--help")
    assert result.returncode == 0
    assert "launch" in result.stdout and "profile" in result.stdout


def test_two_nodes_talk_and_ctrl_c_stops_both_within_5_s() -> None:
    run = Watched([*PLD, "launch", str(TWO_NODES), "--sim"])
    try:
        pids = started_pids(run, "health_monitor", "talker")
        # The monitor logs this when the talker's first heartbeat arrives over DDS.
        run.wait_for(r"\[health_monitor\].*'/talker' is alive", timeout=30)
        start = time.monotonic()
        run.process.send_signal(signal.SIGINT)
        code = run.wait_exit(timeout=10)
        elapsed = time.monotonic() - start
    finally:
        run.kill()
    assert code == 0, run.output
    assert elapsed < 5.0, f"stopping took {elapsed:.1f} s"
    assert "stopping: received SIGINT" in run.output
    assert not any(alive(pid) for pid in pids.values())
    assert "escalating" not in run.output, "nodes should stop on SIGINT alone"


def test_sigterm_stops_the_graph_too() -> None:
    run = Watched([*PLD, "launch", str(TWO_NODES), "--sim"])
    try:
        run.wait_for(r"'/talker' is alive", timeout=30)
        run.process.send_signal(signal.SIGTERM)
        code = run.wait_exit(timeout=10)
    finally:
        run.kill()
    assert code == 0
    assert "stopping: received SIGTERM" in run.output


def test_a_killed_node_is_reported_with_its_signal_and_stops_the_graph() -> None:
    run = Watched([*PLD, "launch", str(TWO_NODES), "--sim"])
    try:
        pids = started_pids(run, "health_monitor", "talker")
        run.wait_for(r"'/talker' is alive", timeout=30)
        os.kill(pids["talker"], signal.SIGKILL)
        code = run.wait_exit(timeout=10)
    finally:
        run.kill()
    assert code == 1
    assert "pld: node 'talker' killed by SIGKILL (exit -9)" in run.output
    assert not alive(pids["health_monitor"])


def test_a_node_that_exits_with_an_error_is_reported_with_its_code_and_reason(tmp_path: Path) -> None:
    profile = tmp_path / "bad_rate.yaml"
    profile.write_text(TWO_NODES.read_text().replace("rate: 10.0", "rate: -1.0"))
    run = Watched([*PLD, "launch", str(profile), "--sim"])
    try:
        code = run.wait_exit(timeout=30)
    finally:
        run.kill()
    assert code == 1
    assert "pld: node 'talker' exited with code 2" in run.output
    assert "parameter 'rate' must be positive, got -1.0" in run.output


def test_unknown_executable_starts_nothing(tmp_path: Path) -> None:
    profile = tmp_path / "unknown.yaml"
    profile.write_text(TWO_NODES.read_text().replace("executable: heartbeat", "executable: teleport"))
    result = pld("launch", str(profile), "--sim")
    assert result.returncode == 2
    assert "pld_ros has no executable 'teleport'" in result.stderr
    assert "started" not in result.stdout


def test_bad_profile_fails_before_any_node_starts(tmp_path: Path) -> None:
    profile = tmp_path / "negative.yaml"
    profile.write_text(TWO_NODES.read_text() + "supervisor: {control_rate: -20}\n")
    result = pld("launch", str(profile), "--sim")
    assert result.returncode == 2
    assert "supervisor.control_rate: Input should be greater than 0 (value -20)" in result.stderr
    assert "started" not in result.stdout


def test_profile_check_and_graph_commands() -> None:
    check = pld("profile", "check", "franka_pick_cube", "--sim")
    assert check.returncode == 0, check.stderr
    assert "franka_pick_cube_sim.yaml: ok" in check.stdout
    graph = pld("profile", "graph", str(TWO_NODES))
    assert "/talker  (pld_ros/heartbeat)" in graph.stdout
    listing = pld("profile", "list")
    assert "yam_gpu_insertion_sim" in listing.stdout.split()
