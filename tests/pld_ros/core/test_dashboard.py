"""The `pld status` dashboard drawn from hand-built snapshots (what the subscriber would have heard)."""

from __future__ import annotations

import math

from pld_ros.core.dashboard import (
    ERROR,
    OK,
    STALE,
    WARN,
    DiagnosticView,
    EpisodeView,
    LoopView,
    Snapshot,
    StageView,
    TrainerView,
    render,
    success_rate,
)
from pld_ros.core.liveness import SourceState

NOW = 1000.0


def episode(received: float = NOW, **changes: object) -> EpisodeView:
    values: dict[str, object] = {
        "received": received,
        "robot_id": "fr3_left",
        "episode_id": 17,
        "phase": "TAKEOVER",
        "mode": "PROBE_TAKEOVER",
        "step": 57,
        "probe_steps": 23,
        "stage_name": "pick",
        "stage_index": 0,
        "paused": False,
        "estopped": False,
        "episodes_completed": 16,
        "successes": 9,
        "aborted": 1,
        "last_outcome": "SUCCESS",
        "success_probability": 0.2,
        **changes,
    }
    return EpisodeView(**values)  # type: ignore[arg-type]


def trainer(received: float = NOW) -> TrainerView:
    return TrainerView(
        received=received,
        trainer_id="gpu-box",
        version=12,
        updates=4800,
        updates_per_second=9.75,
        critic_loss=0.1234,
        actor_loss=-1.5,
        q_mean=3.25,
        temperature=0.05,
        xi=0.3,
        offline_transitions=1234,
        online_transitions=5678,
        episodes=36,
    )


def diagnostic(name: str, level: int, message: str, received: float = NOW, **values: str) -> DiagnosticView:
    return DiagnosticView(
        received=received, name=name, level=level, message=message, hardware_id="", values=values
    )


def test_nothing_heard_says_so() -> None:
    lines = render(Snapshot(namespace="/robot1"), NOW, "12:00:00")
    assert lines[0] == "pld status /robot1  12:00:00"
    assert not Snapshot().heard and "nothing heard yet" in lines[-1]


def test_a_running_graph_shows_episode_run_trainer_timing_nodes_and_the_worst_diagnostics_first() -> None:
    snapshot = Snapshot(
        episode=episode(),
        stage=StageView(NOW, "pick", 0, "active", 2.34, 4, ""),
        trainer=trainer(),
        diagnostics={
            d.name: d
            for d in [
                diagnostic(
                    "pld/arm/arm",
                    WARN,
                    "holding",
                    loop_rate_hz="19.98",
                    loop_period_p99_ms="52.10",
                    tick_latency_p99_ms="1.20",
                    deadline_misses="0",
                    loop_missed_ticks="2",
                ),
                diagnostic(
                    "pld/supervisor",
                    OK,
                    "takeover",
                    loop_rate_hz="20.01",
                    loop_period_p99_ms="51.00",
                    tick_latency_p99_ms="0.80",
                    deadline_misses="3",
                ),
                diagnostic("pld/camera/wrist", ERROR, "stale: no frame for 2.10 s"),
                diagnostic("pld/recorder", OK, "recording"),
                diagnostic("pld/liveness/trainer", STALE, "stale for 9.0 s"),
            ]
        },
        nodes=[("/arm_driver", SourceState(True, 0.2)), ("/trainer", SourceState(False, 9.0))],
    )
    text = "\n".join(render(snapshot, NOW))
    assert "episode   17 takeover, probe_takeover, step 57 (k=23), last outcome success" in text
    assert "16 episodes, 9 successes, 1 aborted: success rate 60.0 %" in text  # 9 of 15 counted
    assert "stage     pick [0] active for 2.3 s, cycle 4" in text
    assert (
        "trainer   gpu-box: weights v12, 4800 updates, 9.8 updates/s, buffers 1234 offline / 5678 online"
        in text
    )
    assert "critic loss 0.123, actor loss -1.5, Q 3.25, temperature 0.05, xi 0.3" in text
    timing = next(line for line in text.splitlines() if "pld/arm/arm" in line and "Hz" not in line)
    assert timing.split() == ["pld/arm/arm", "19.98", "52.10", "ms", "1.20", "ms", "0", "(+2", "missed)"]
    assert "nodes     1 alive, 1 not beating: /trainer (stale for 9.0 s)" in text
    assert "health    5 statuses: 2 OK, 1 WARN, 1 ERROR, 1 STALE" in text
    warnings = text.splitlines()[-3:]
    assert warnings == [
        "  STALE pld/liveness/trainer: stale for 9.0 s",
        "  ERROR pld/camera/wrist: stale: no frame for 2.10 s",
        "  WARN  pld/arm/arm: holding",
    ]
    assert "last heard" not in text


def test_quiet_topics_show_their_age_and_states_read_plainly() -> None:
    snapshot = Snapshot(
        episode=episode(
            received=NOW - 12.0, estopped=True, mode="BASE_ONLY", episodes_completed=0, successes=0, aborted=0
        ),
        trainer=trainer(received=NOW - 30.0),
        loop=LoopView(NOW, 3, 41.5, 20, 4, 3, 1, 610.0, (("pick", 8, 6), ("insert", 7, 5))),
        diagnostics={"pld/x": diagnostic("pld/x", WARN, "slow", received=NOW - 5.0)},
    )
    lines = render(snapshot, NOW)
    text = "\n".join(lines)
    assert "episode   17 E-STOPPED, base_only, step 57, last outcome success  (last heard 12 s ago)" in text
    assert "success rate n/a %" in text and "(k=" not in text
    assert "gpu-box" in text and "(last heard 30 s ago)" in text
    assert "loop      3 cycles (mean 41.5 s), 20 attempts, 3/4 recoveries, 1 interventions" in text
    assert "stages (successes/attempts): pick 6/8, insert 5/7" in text
    assert "  WARN  pld/x: slow  (last heard 5 s ago)" in text
    assert not any(line.startswith(("timing", "nodes", "stage ")) for line in lines)


def test_a_graph_without_a_supervisor_still_shows_what_it_has() -> None:
    many = {f"pld/n{i:02d}": diagnostic(f"pld/n{i:02d}", WARN, "meh") for i in range(15)}
    lines = render(Snapshot(diagnostics=many), NOW)
    assert "episode   no episode/status (no supervisor?)" in lines
    assert lines[-1] == "  ... and 3 more" and sum("WARN  pld/n" in line for line in lines) == 12


def test_success_rate_leaves_aborted_episodes_out() -> None:
    assert success_rate(3, 5, 1) == 0.75
    assert math.isnan(success_rate(0, 2, 2))
