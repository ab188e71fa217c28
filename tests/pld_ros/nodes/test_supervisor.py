"""The supervisor as a process, against the simulated world and the arm driver as processes.

The test plays the policy side the supervisor watches (docs/policy_layer.md): once per arm state
it publishes a base action (fresh while the "VLA" is alive), success scores from the simulator's
``sim/success``, and during an episode a hold command -- from the base until step k, then
COMBINED as the residual node would. No real base policy, residual or reward node runs here:
they are written separately, and the supervisor depends only on their topics.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from rclpy.action.client import ActionClient
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from pld_msgs.action import RunEpisodes
from pld_msgs.msg import (
    ActionSource,
    BaseAction,
    DeltaPoseCommand,
    EpisodeEvent,
    EpisodeOutcome,
    EpisodePhase,
    EpisodeStatus,
    LoopStats,
    RobotState,
    RunMode,
    StageState,
    SuccessScores,
)
from pld_msgs.srv import EStop
from pld_ros.core.episode_log import PLOT_FILE, SUMMARY_FILE, read_episodes
from pld_ros.nodes.qos import EVENTS_QOS, LATCHED_QOS
from pld_ros.nodes.supervisor import LOOP_PLOT_FILE
from tests.conftest import FIXTURES
from tests.processes import Watched
from tests.ros_probe import RosProbe

pytestmark = pytest.mark.ros

PROFILE = FIXTURES / "profiles" / "supervisor_sim.yaml"


def node(module: str, profile: Path, *parameters: str) -> Watched:
    argv = [sys.executable, "-m", f"pld_ros.nodes.{module}", "--ros-args", "-p", f"profile:={profile}"]
    for parameter in parameters:
        argv += ["-p", parameter]
    return Watched(argv)


class PolicySide(RosProbe):
    """Base policy, residual and reward as topics, plus the supervisor's services."""

    def __init__(self) -> None:
        super().__init__("policy_side")
        self.base_alive = True
        self.success = False
        self.forced: float | None = None
        """A success probability to report instead of the simulator's."""
        self.loop: Any = None
        self.events: list[Any] = []
        self.states: list[Any] = []
        self.status: Any = None
        self.stage: Any = None
        self.episode: Any = None  # the STARTED event of the running episode
        self._step = 0
        node = self.node
        node.create_subscription(RobotState, "/arm/state", self._on_state, 10)
        node.create_subscription(Bool, "/sim/success", lambda m: setattr(self, "success", m.data), 10)
        node.create_subscription(EpisodeEvent, "/episode/events", self._on_event, EVENTS_QOS)
        node.create_subscription(EpisodeStatus, "/episode/status", lambda m: setattr(self, "status", m), 10)
        node.create_subscription(StageState, "/stage/state", lambda m: setattr(self, "stage", m), 10)
        node.create_subscription(LoopStats, "/loop/stats", lambda m: setattr(self, "loop", m), LATCHED_QOS)
        self.failures = node.create_publisher(String, "/stage/failure", 10)
        self.base = node.create_publisher(BaseAction, "/policy/base/action", 10)
        self.scores = node.create_publisher(SuccessScores, "/reward/scores", 10)
        self.commands = node.create_publisher(DeltaPoseCommand, "/arm/command", 10)
        self.estop: Any = node.create_client(EStop, "/supervisor/estop")
        self.services: dict[str, Any] = {
            name: node.create_client(Trigger, f"/supervisor/{name}") for name in ("pause", "resume", "stop")
        }

    def _on_event(self, event: Any) -> None:
        self.events.append(event)
        if event.event == EpisodeEvent.STARTED:
            self.episode, self._step = event, 0
        elif event.event == EpisodeEvent.ENDED:
            self.episode = None

    def _on_state(self, state: Any) -> None:
        self.states.append(state)
        action = BaseAction(action=[0.0] * 7, fresh=self.base_alive, age=0.05)
        action.header.stamp = state.header.stamp
        self.base.publish(action)
        probability = self.forced if self.forced is not None else float(self.success)
        scores = SuccessScores(probabilities=[probability], privileged=True)
        scores.header.stamp = state.header.stamp
        self.scores.publish(scores)
        episode = self.episode
        if episode is None:
            return
        self._step += 1
        command = DeltaPoseCommand(episode_id=episode.episode_id, step=self._step, base_action_age=0.05)
        command.header.frame_id = state.header.frame_id
        takeover = episode.mode.value == RunMode.PROBE_TAKEOVER and self._step > episode.probe_steps
        command.source.value = ActionSource.COMBINED if takeover else ActionSource.BASE
        self.commands.publish(command)

    def wait_event(
        self, kind: int, episode_id: int, timeout: float, log: Watched, phase: int | None = None
    ) -> Any:
        def found() -> Any:
            return next(
                (
                    e
                    for e in self.events
                    if e.event == kind and e.episode_id == episode_id and phase in (None, e.phase.value)
                ),
                None,
            )

        self.spin_until(
            lambda: found() is not None, timeout, f"event {kind} of episode {episode_id}:\n{log.output}"
        )
        return found()

    def wait_log(self, log: Watched, pattern: str, timeout: float) -> None:
        """Wait for a line in a process's output while the policy side keeps publishing."""

        def seen() -> bool:
            try:
                log.wait_for(pattern, timeout=0.01)
            except AssertionError:
                return False
            return True

        self.spin_until(seen, timeout, f"{pattern!r} in:\n{log.output}")

    def trigger(self, name: str) -> Any:
        return self.call(self.services[name], Trigger.Request())


@pytest.fixture
def side() -> Iterator[PolicySide]:
    with PolicySide() as probe:
        yield probe


def overlay(tmp_path: Path, autostart: bool = True) -> Path:
    """The fixture profile with the run log in this test's directory."""
    path = tmp_path / f"profile_{autostart}.yaml"
    supervisor = {"run_directory": str(tmp_path), "autostart": autostart}
    path.write_text(yaml.safe_dump({"extends": str(PROFILE), "supervisor": supervisor}))
    return path


def stop(processes: tuple[Watched, ...]) -> None:
    """SIGINT every process still running, then wait for each (killing one that hangs)."""
    for process in processes:
        if process.process.poll() is None:
            process.process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait_exit(timeout=10)
        except Exception:
            process.kill()


def position(state: Any) -> np.ndarray:
    p = state.ee_pose.position
    return np.array([p.x, p.y, p.z])


def test_the_supervisor_resets_runs_ends_aborts_recovers_and_pauses(side: PolicySide, tmp_path: Path) -> None:
    profile = overlay(tmp_path)
    world = node("sim_world", profile)
    driver = node("arm_driver", profile, "arm:=arm")
    supervisor = node("supervisor", profile)
    processes: tuple[Watched, ...] = (world, driver, supervisor)
    try:
        # Warm-up episode: base alone for the whole episode, after a reset home with the scene reset.
        side.spin_until(
            lambda: bool(side.states) and side.states[-1].mode == RobotState.MODE_IDLE,
            30,
            f"an idle arm:\n{driver.output}",
        )
        start = position(side.states[-1])
        first = side.wait_event(EpisodeEvent.STARTED, 1, 40, supervisor)
        assert first.mode.value == RunMode.BASE_ONLY and first.probe_steps == 40
        assert np.all(np.abs(position(side.states[-1]) - start) <= 0.02 + 0.006)
        # The reset began with the arm driver's joint homing (the Franka profile asks for it).
        side.wait_log(supervisor, r"joint homing: homed", 5)
        side.wait_log(driver, r"homed to \[", 5)
        side.wait_log(supervisor, r"scene reset: cube at", 5)
        side.wait_log(supervisor, r"episode 1 started: mode base_only, k=40", 5)
        ended = side.wait_event(EpisodeEvent.ENDED, 1, 10, supervisor)
        assert (ended.outcome.value, ended.reason, ended.step) == (
            EpisodeOutcome.FAILURE,
            "step limit (40 steps)",
            40,
        )

        # Probe then takeover, announced at the first COMBINED command.
        second = side.wait_event(EpisodeEvent.STARTED, 2, 20, supervisor)
        assert second.mode.value == RunMode.PROBE_TAKEOVER and 0 <= second.probe_steps <= 5
        change = side.wait_event(EpisodeEvent.PHASE_CHANGED, 2, 5, supervisor, EpisodePhase.TAKEOVER)
        assert change.step <= second.probe_steps + 3
        side.wait_log(supervisor, r"episode 2: probe -> takeover at step \d+", 5)
        assert side.wait_event(EpisodeEvent.ENDED, 2, 10, supervisor).outcome.value == EpisodeOutcome.FAILURE

        # The VLA dies: the episode is aborted, never a failure; it comes back and the run goes on.
        side.wait_event(EpisodeEvent.STARTED, 3, 20, supervisor)
        side.base_alive = False
        aborted = side.wait_event(EpisodeEvent.ENDED, 3, 10, supervisor)
        assert aborted.outcome.value == EpisodeOutcome.ABORTED
        assert aborted.reason.startswith("base policy stale for ")
        side.base_alive = True
        side.wait_event(EpisodeEvent.STARTED, 4, 20, supervisor)
        assert side.stage is not None and side.stage.name == "lift"

        # Pause: episode 4 is not cut short, and no episode starts until resumed.
        assert side.trigger("pause").success
        assert side.wait_event(EpisodeEvent.ENDED, 4, 10, supervisor).outcome.value == EpisodeOutcome.FAILURE
        side.spin_for(1.5)
        assert not [e for e in side.events if e.episode_id >= 5 and e.event == EpisodeEvent.STARTED]
        assert side.status.paused and side.status.phase.value == EpisodePhase.IDLE
        assert (side.status.episodes_completed, side.status.aborted) == (4, 1)
        assert side.trigger("resume").success
        side.wait_event(EpisodeEvent.STARTED, 5, 20, supervisor)

        # E-stop: every arm latches and the episode is aborted; once cleared, the run goes on.
        answer = side.call(side.estop, EStop.Request(engage=True, reason="test"))
        assert answer.success and answer.engaged
        aborted = side.wait_event(EpisodeEvent.ENDED, 5, 5, supervisor)
        assert (aborted.outcome.value, aborted.reason) == (EpisodeOutcome.ABORTED, "e-stop: test")
        side.spin_until(lambda: side.states[-1].mode == RobotState.MODE_ESTOP, 5, "the arm's e-stop")
        side.spin_until(lambda: side.status.estopped, 5, "the e-stop in the status")
        answer = side.call(side.estop, EStop.Request(engage=False))
        assert answer.success and not answer.engaged, answer.message
        side.wait_event(EpisodeEvent.STARTED, 6, 20, supervisor)

        # Shut down mid-episode: the episode is logged as aborted, the summary and plot are written.
        supervisor.process.send_signal(signal.SIGINT)
        assert supervisor.wait_exit(timeout=15) == 0, supervisor.output
        side.spin_for(0.3)
        side.episode = None  # the policy side of a dead supervisor's episode stops too
        [run_dir] = tmp_path.glob("franka_pick_cube-*")
        records = read_episodes(run_dir)
        outcomes = ["failure", "failure", "aborted", "failure", "aborted", "aborted"]
        assert [r.outcome for r in records] == outcomes
        assert records[-1].reason == "supervisor shut down"
        assert (run_dir / PLOT_FILE).stat().st_size > 0
        assert "aborted                                  3" in (run_dir / SUMMARY_FILE).read_text()

        # A run with a count ends by itself, cleanly, with its summary in the log.
        counted = node("supervisor", profile, "episodes:=1")
        processes = (*processes, counted)
        side.spin_until(lambda: counted.process.poll() is not None, 30, f"the count run:\n{counted.output}")
        assert counted.wait_exit(timeout=1) == 0, counted.output
        assert "episode count reached" in counted.output and "success rate (excl. aborted)" in counted.output
        [second_run] = set(tmp_path.glob("franka_pick_cube-*")) - {run_dir}
        # Episode ids go on from the earlier run's.
        assert [(r.episode_id, r.outcome) for r in read_episodes(second_run)] == [(7, "failure")]

        # Without autostart, a run is a goal of the run_episodes action.
        on_demand = node("supervisor", overlay(tmp_path, autostart=False))
        processes = (*processes, on_demand)
        client: Any = ActionClient(side.node, RunEpisodes, "/supervisor/run_episodes")
        side.spin_until(client.server_is_ready, 20, f"the action server:\n{on_demand.output}")
        goal = RunEpisodes.Goal(episodes=1)
        goal.mode.value = RunMode.PROBE_TAKEOVER
        feedback: list[Any] = []
        sent = client.send_goal_async(goal, feedback_callback=feedback.append)
        side.spin_until(sent.done, 10, "the goal's acceptance")
        assert sent.result().accepted
        result = sent.result().get_result_async()
        side.spin_until(result.done, 30, f"the run's result:\n{on_demand.output}")
        answer = result.result().result
        assert (answer.episodes, answer.failures, answer.reason) == (1, 1, "episode count reached")
        assert feedback and feedback[-1].feedback.status.episode_id == 8
        assert on_demand.process.poll() is None, "an on-demand supervisor waits for the next goal"
        client.destroy()
    finally:
        stop(processes)
    for process in processes:
        assert "Traceback" not in process.output, process.output


def test_a_loop_of_stage_episodes_goes_on_without_resets_recovers_and_reports(
    side: PolicySide, tmp_path: Path
) -> None:
    """Episode scope "stage": each stage attempt is an episode; a detector's failure on
    stage/failure routes to the recovery; loop/stats and the run's summary report the loop."""
    stages = [
        {"name": "grasp", "timeout": 30.0, "on_success": "lift", "on_failure": "recover"},
        {"name": "lift", "timeout": 30.0, "on_success": "grasp", "on_failure": "recover"},
        {"name": "recover", "timeout": 30.0, "on_success": "grasp", "on_failure": "abort"},
    ]
    profile = tmp_path / "loop.yaml"
    profile.write_text(
        yaml.safe_dump(
            {
                "extends": str(PROFILE),
                "reward": {"stages": stages},
                "supervisor": {
                    "run_directory": str(tmp_path),
                    "episode_scope": "stage",
                    "max_episode_steps": 400,
                    "warmup_episodes": 0,
                },
            }
        )
    )
    world = node("sim_world", profile)
    driver = node("arm_driver", profile, "arm:=arm")
    supervisor = node("supervisor", profile)
    processes = (world, driver, supervisor)
    try:
        side.forced = 0.0
        side.wait_event(EpisodeEvent.STARTED, 1, 60, supervisor)
        assert side.stage.name == "grasp"
        side.forced = 1.0
        assert side.wait_event(EpisodeEvent.ENDED, 1, 10, supervisor).outcome.value == EpisodeOutcome.SUCCESS
        side.forced = 0.0
        second = side.wait_event(EpisodeEvent.STARTED, 2, 5, supervisor)
        assert second.phase.value == EpisodePhase.PROBING
        side.spin_until(lambda: side.stage.name == "lift", 5, "the second stage")
        assert "episode 2: resetting" not in supervisor.output, "no reset between stages"
        side.failures.publish(String(data="part dropped"))
        failed = side.wait_event(EpisodeEvent.ENDED, 2, 5, supervisor)
        assert (failed.outcome.value, failed.reason) == (EpisodeOutcome.FAILURE, "lift failed: part dropped")
        side.wait_event(EpisodeEvent.STARTED, 3, 5, supervisor)
        side.spin_until(lambda: side.stage.name == "recover", 5, "the recovery")
        assert side.stage.status == StageState.STATUS_RECOVERING
        side.spin_until(lambda: side.loop is not None and side.loop.attempts == 2, 5, "loop statistics")
        loop = side.loop
        assert list(loop.stages) == ["grasp", "lift"] and list(loop.stage_successes) == [1, 0]
        assert (loop.cycles, loop.interventions, loop.recoveries) == (0, 0, 0)
        side.forced = 1.0
        assert side.wait_event(EpisodeEvent.ENDED, 3, 10, supervisor).outcome.value == EpisodeOutcome.SUCCESS
        side.spin_until(lambda: side.loop.attempts == 3, 5, "the recovery in the statistics")
        assert (side.loop.recoveries, side.loop.recovered) == (1, 1)

        supervisor.process.send_signal(signal.SIGINT)
        assert supervisor.wait_exit(timeout=15) == 0, supervisor.output
        [run_dir] = tmp_path.glob("franka_pick_cube-*")
        records = read_episodes(run_dir)
        assert [(r.stage, r.continued, r.recovering) for r in records[:3]] == [
            ("grasp", False, False),
            ("lift", True, False),
            ("recover", True, True),
        ]
        summary = (run_dir / SUMMARY_FILE).read_text()
        assert "recoveries (succeeded)" in summary and "cycles completed" in summary
        assert (run_dir / LOOP_PLOT_FILE).stat().st_size > 0
    finally:
        stop(processes)
    for process in processes:
        assert "Traceback" not in process.output, process.output
