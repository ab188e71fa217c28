"""`pld demo` (cli.py) end to end: the whole simulated franka_pick_cube graph runs episodes alone.

Every node is a real process: franky-sim and the rendered world, the arm driver, the base policy
(the shipped ONNX policy), the residual policy, the reward classifier and the supervisor, talking
over DDS. No fake anywhere.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pld_msgs.msg import StageState
from pld_msgs.srv import InjectFault
from pld_ros.core.episode_log import EpisodeRecord, read_episodes
from pld_ros.core.loop_stats import summarize_loop
from pld_ros.core.observation import ACTION_DIM
from pld_ros.learning.episode_store import EpisodeStore
from tests.conftest import CONFIG_DIR
from tests.openpi_server import OpenpiTestServer
from tests.processes import Watched
from tests.ros_probe import RosProbe

PLD = (sys.executable, "-m", "pld_ros.cli")

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def demo_profile(tmp_path: Path, host: str, **sections: dict[str, object]) -> Path:
    """The shipped simulated profile with franky-sim on ``host``, short episodes and a probe that
    ends early, writing its runs under ``tmp_path``."""
    overlay: dict[str, object] = {
        "extends": str(CONFIG_DIR / "franka_pick_cube_sim.yaml"),
        "arms": {"arm": {"host": host}},
        "policies": {"residual": {"max_probe_steps": 10}},
        "supervisor": {
            "max_episode_steps": 60,
            "warmup_episodes": 1,
            "settle_time": 0.2,
            "run_directory": str(tmp_path / "runs"),
        },
        "buffer": {"directory": str(tmp_path / "episodes")},
        **sections,
    }
    path = tmp_path / "demo_sim.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path


def run_demo(profile: Path, episodes: int, timeout: float) -> tuple[str, list[EpisodeRecord], Path]:
    run = Watched([*PLD, "demo", str(profile), "--episodes", str(episodes)])
    try:
        code = run.wait_exit(timeout=timeout)
    finally:
        run.kill()
    assert code == 0, run.output[-4000:]
    [run_dir] = (profile.parent / "runs").iterdir()
    return run.output, read_episodes(run_dir), run_dir


def test_demo_runs_episodes_unattended_and_summarizes_them(tmp_path: Path) -> None:
    output, records, run_dir = run_demo(demo_profile(tmp_path, "127.0.0.51"), episodes=3, timeout=240)
    # A fault (franky's planner now and then, on a loaded machine) aborts an episode, which is
    # then retried: three episodes count.
    records = [r for r in records if r.outcome != "aborted"]
    assert len(records) == 3
    assert records[0].mode == "base_only"  # the warm-up episode
    assert {r.mode for r in records[1:]} == {"probe_takeover"}
    # Probing then takeover, visible in the log, at the k the supervisor drew.
    # (A tick whose base action is a hold stays with the base policy, so the takeover can come a
    # step or two after k.)
    takeovers = 0
    for record in records[1:]:
        episode, k = record.episode_id, record.probe_steps
        assert f"episode {episode} started: mode probe_takeover, k={k}" in output
        switch = re.search(rf"episode {episode}: probe -> takeover at step (\d+) \(k={k}\)", output)
        if switch is not None:
            assert int(switch.group(1)) >= k
            takeovers += 1
    assert takeovers >= 1, output[-6000:]
    assert "success rate" in output
    assert (run_dir / "outcomes.png").stat().st_size > 0
    # The replay buffer stored every counted episode whole, with the supervisor's outcome.
    with EpisodeStore(tmp_path / "episodes", writable=False) as store:
        stored = {e.meta.episode_id: e for e in store.episodes()}
        assert not store.problems
    for record in records:
        assert stored[record.episode_id].meta.outcome.name.lower() == record.outcome
        assert len(stored[record.episode_id]) >= record.steps - 1


def test_demo_with_the_onnx_success_classifier(tmp_path: Path) -> None:
    classifier = CONFIG_DIR / "models" / "franka_pick_cube_reward.onnx"
    profile = demo_profile(
        tmp_path,
        "127.0.0.52",
        reward={"backend": "onnx", "path": str(classifier)},
    )
    output, records, _ = run_demo(profile, episodes=2, timeout=200)
    assert len([r for r in records if r.outcome in ("success", "failure")]) == 2, records
    assert "reward_classifier" in output


def hold_chunk(_request: dict[str, Any], _number: int) -> np.ndarray:
    """A chunk that keeps the arm where it is, gripper open."""
    return np.zeros((4, ACTION_DIM), dtype=np.float32)


def test_a_policy_server_that_dies_mid_episode_aborts_it_and_the_run_recovers(tmp_path: Path) -> None:
    """The base policy is an openpi server (tests/openpi_server.py: a chunk generator, as no VLA
    can run here) that is stopped in the middle of an episode and started again."""
    server = OpenpiTestServer(latency=0.05, chunks=hold_chunk).start()
    profile = demo_profile(
        tmp_path,
        "127.0.0.53",
        policies={
            "base": {
                "backend": "openpi",
                "uri": server.uri,
                "path": None,
                "chunk_horizon": 4,
                "execute_steps": 2,
                "timeout": 0.5,
            },
            "residual": {"max_probe_steps": 10},
        },
    )
    run = Watched([*PLD, "demo", str(profile), "--episodes", "3"])
    try:
        run.wait_for(r"episode 2 started", timeout=120)
        time.sleep(0.5)
        server.stop()
        aborted = run.wait_for(r"episode (\d+) ended: ABORTED \((base policy[^)]*)\)", timeout=30)
        time.sleep(1.0)
        server.start()
        code = run.wait_exit(timeout=120)
    finally:
        run.kill()
        server.stop()
    assert code == 0, run.output[-4000:]
    [run_dir] = (profile.parent / "runs").iterdir()
    records = read_episodes(run_dir)
    by_id = {r.episode_id: r for r in records}
    assert by_id[int(aborted.group(1))].outcome == "aborted"
    assert "base policy" in by_id[int(aborted.group(1))].reason
    # The run went on once the server was back: three episodes that count, after the aborted ones.
    counted = [r for r in records if r.outcome != "aborted"]
    assert len(counted) == 3
    assert counted[-1].episode_id > int(aborted.group(1))


@pytest.mark.timeout(600)  # about 70 s on a quiet machine; the waits allow for a loaded one
def test_the_yam_loop_runs_its_stages_through_the_graph_and_recovers_a_dropped_card(tmp_path: Path) -> None:
    """The simulated YAM graph: two i2rt sim arm drivers, the world (its scripted expert standing in
    for the VLA over the openpi protocol, as no VLA can run here), the base policy sending each
    stage's prompt, the privileged reward, the supervisor with one episode per stage. A drop is
    injected while the card is carried to slot 3: the stage fails into the recovery, which puts the
    card back home, and the loop goes on without a reset."""
    overlay = {
        "extends": str(CONFIG_DIR / "yam_gpu_insertion_sim.yaml"),
        "policies": {"base": {"uri": "ws://127.0.0.1:8771"}},
        "supervisor": {"run_directory": str(tmp_path / "runs")},
        "buffer": {"directory": str(tmp_path / "episodes")},
    }
    profile = tmp_path / "yam_sim.yaml"
    profile.write_text(yaml.safe_dump(overlay))
    run = Watched([*PLD, "demo", str(profile), "--episodes", "9"])
    stages: list[str] = []
    try:
        with RosProbe("yam_loop_probe") as probe:
            probe.node.create_subscription(StageState, "/stage/state", lambda m: stages.append(m.name), 10)
            inject: Any = probe.node.create_client(InjectFault, "/sim/inject_fault")
            probe.spin_until(
                lambda: "move_to_slot3" in stages, 240, lambda: f"the second stage:\n{run.output[-3000:]}"
            )
            # The card is lifted out of slot 1 and carried: drop it as soon as it is held.
            answer = probe.call(inject, InjectFault.Request(fault="drop"))
            while not answer.success and stages[-1] == "move_to_slot3":
                probe.spin_for(0.05)
                answer = probe.call(inject, InjectFault.Request(fault="drop"))
            assert answer.success, answer.message
        code = run.wait_exit(timeout=240)
    finally:
        run.kill()
    assert code == 0, run.output[-4000:]
    [run_dir] = (tmp_path / "runs").iterdir()
    records = read_episodes(run_dir)
    # A fault on a loaded machine (a stale camera) aborts an attempt and brings a full reset:
    # the loop's routes are those of the attempts that count.
    counted = [r for r in records if r.outcome != "aborted"]
    outline = [(r.stage, r.outcome, r.reason) for r in records]
    [dropped] = [i for i, r in enumerate(counted) if "injected drop" in r.reason]
    assert (counted[dropped].stage, counted[dropped].outcome) == ("move_to_slot3", "failure"), outline
    # The run ends at its episode count: the attempt after the recovery may not be in it.
    recovery, *after = counted[dropped + 1 : dropped + 3]
    assert (recovery.stage, recovery.outcome, recovery.recovering) == ("recover", "success", True), outline
    assert recovery.continued, "the recovery started where the failed stage ended"
    # The loop goes on at the first stage: without a reset, unless an aborted attempt came between
    # (then the full reset is what an abort brings).
    between = records[records.index(recovery) + 1 : records.index(after[0])] if after else []
    aborted_between = any(r.outcome == "aborted" for r in between)
    assert all(r.stage == "insert_slot1" and r.continued != aborted_between for r in after), outline
    summary = summarize_loop(records)
    assert summary.recoveries >= 1 and summary.recovered >= 1
    assert "cycles completed" in run.output, "pld demo prints the loop's statistics"
    assert (run_dir / "loop.png").stat().st_size > 0
