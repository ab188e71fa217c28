"""`pld status --once` as its own process, against real publishers over DDS: the test process
plays the supervisor and the trainer (their message types, on their topics), real heartbeat and
health-monitor node processes beat and report liveness."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest

from pld_msgs.msg import EpisodeOutcome, EpisodePhase, EpisodeStatus, RunMode, TrainingMetrics
from pld_ros.core.rate import TickTiming
from pld_ros.nodes.diagnostics import diagnostics_publisher, make_status, publish_statuses
from tests.processes import Watched
from tests.ros_probe import RosProbe

pytestmark = pytest.mark.ros

NAMESPACE = f"/status_test_{os.getpid()}"
PLD = (sys.executable, "-m", "pld_ros.cli")


def node(module: str, *parameters: str) -> Watched:
    ros_args = [part for parameter in parameters for part in ("-p", parameter)]
    return Watched([sys.executable, "-m", module, "--ros-args", "-r", f"__ns:={NAMESPACE}", *ros_args])


def publish_graph(probe: RosProbe, status: subprocess.Popen[str]) -> None:
    """Publish the supervisor's and trainer's topics at 10 Hz until ``status`` exits."""
    episode_pub = probe.node.create_publisher(EpisodeStatus, "episode/status", 10)
    trainer_pub = probe.node.create_publisher(TrainingMetrics, "trainer/metrics", 10)
    diagnostics = diagnostics_publisher(probe.node)
    timing = TickTiming(0.05)
    for tick in range(40):
        timing.record(tick * 0.05, 0.001)
    while status.poll() is None:
        episode = EpisodeStatus(
            robot_id="fr3_test",
            episode_id=7,
            step=42,
            probe_steps=11,
            episodes_completed=6,
            successes=3,
            aborted=2,
            success_probability=0.4,
        )
        episode.phase.value = EpisodePhase.TAKEOVER
        episode.mode.value = RunMode.PROBE_TAKEOVER
        episode.last_outcome.value = EpisodeOutcome.FAILURE
        episode_pub.publish(episode)
        trainer_pub.publish(
            TrainingMetrics(
                trainer_id="gpu-test",
                version=5,
                updates=1234,
                updates_per_second=12.5,
                critic_loss=0.25,
                actor_loss=-2.0,
                q_mean=1.5,
                temperature=0.1,
                xi=math.nan,
                offline_transitions=300,
                online_transitions=900,
                episodes=6,
            )
        )
        publish_statuses(
            probe.node,
            diagnostics,
            [
                make_status(
                    level=b"\x01",
                    name="pld/arm/test_arm",
                    hardware_id="test",
                    message="holding after a command timeout",
                    values=timing.stats().values(),
                )
            ],
        )
        probe.spin_for(0.1)


def test_pld_status_once_shows_the_running_graph() -> None:
    started = [
        node("pld_ros.nodes.heartbeat"),
        node("pld_ros.nodes.health_monitor", f"expected:=['{NAMESPACE}/ghost']"),
    ]
    probe = RosProbe("status_probe", NAMESPACE)
    try:
        status = subprocess.Popen(
            [*PLD, "status", "--once", "--wait", "5", "--namespace", NAMESPACE.lstrip("/")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        publish_graph(probe, status)
        out, err = status.communicate(timeout=30)
    finally:
        probe.close()
        for process in started:
            process.kill()
    assert status.returncode == 0, err
    assert f"pld status {NAMESPACE}" in out
    assert "episode   7 takeover, probe_takeover, step 42 (k=11), last outcome failure" in out
    assert "6 episodes, 3 successes, 2 aborted: success rate 75.0 %" in out
    assert (
        "trainer   gpu-test: weights v5, 1234 updates, 12.5 updates/s, buffers 300 offline / 900 online"
        in out
    )
    assert "xi n/a" in out
    row = next(line for line in out.splitlines() if line.startswith("          pld/arm/test_arm"))
    assert row.split() == ["pld/arm/test_arm", "20.00", "50.00", "ms", "1.00", "ms", "0"]
    assert "nodes     1 alive" in out  # the heartbeat node (its own name is beating)
    # The health monitor's view: the expected node never beat (ERROR), the heartbeat node is OK.
    assert f"  ERROR pld/liveness{NAMESPACE}/ghost: never seen" in out
    assert "  WARN  pld/arm/test_arm: holding after a command timeout" in out


def test_pld_status_once_fails_when_nothing_is_heard() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [*PLD, "status", "--once", "--wait", "1", "--namespace", "/nobody_here"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1 and "nothing heard yet" in result.stdout
    assert time.monotonic() - started < 30
