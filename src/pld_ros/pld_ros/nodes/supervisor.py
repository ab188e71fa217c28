"""Supervisor node: runs episodes without a human (the auto-reset), see docs/policy_layer.md.

Each ``<arm>/state`` is one tick of :class:`~pld_ros.core.episode.EpisodeSupervisor`: the node
gathers what arrived since the previous tick (the newest policy command, success scores, base
action freshness, camera staleness), ticks the core, and carries out what it says: reset
commands, episode events, the scene reset, status and stage state. Every ended episode goes to the
run's episode log; when the run ends (its count reached, or the node shut down) the run directory
gets ``summary.txt`` and ``outcomes.png``. A failure detector (a dropped part) reports on
``stage/failure``; with one episode per stage (a long-horizon loop) the loop's statistics go to
``loop/stats`` after every stage attempt, and to ``summary.txt`` and ``loop.png`` at the end. A
run that reaches its count exits the process with 0, which ends the graph as completed.
"""

from __future__ import annotations

import math
import sys
import time
from datetime import datetime, timezone
from functools import partial
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import Pose as PoseMsg
from rclpy._rclpy_pybind11 import RCLError
from rclpy.action.server import ActionServer, CancelResponse, GoalResponse, ServerGoalHandle
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.client import Client
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.task import Future
from std_msgs.msg import Bool, Header, String
from std_srvs.srv import Trigger

from pld_msgs.action import RunEpisodes
from pld_msgs.msg import (
    BaseAction,
    DeltaPoseCommand,
    EpisodeEvent,
    EpisodeStatus,
    LoopStats,
    RobotState,
    StageState,
    SuccessScores,
)
from pld_msgs.srv import EStop, ResetScene
from pld_ros.core.arm_controller import ArmMode
from pld_ros.core.episode import (
    EpisodeSettings,
    EpisodeSupervisor,
    Event,
    EventKind,
    Outcome,
    ResetCommand,
    RunMode,
    RunRequest,
    RunResult,
    SeenCommand,
    Source,
    Status,
    TickInput,
)
from pld_ros.core.episode_log import (
    PLOT_FILE,
    SUMMARY_FILE,
    EpisodeLog,
    EpisodeRecord,
    format_summary,
    last_episode_id,
    plot_outcomes,
    run_directory_name,
    summarize,
)
from pld_ros.core.frame_sync import NoSet
from pld_ros.core.loop_stats import format_loop_summary, plot_loop, summarize_loop
from pld_ros.core.messages import pose_of
from pld_ros.core.rate import TickTiming
from pld_ros.core.spatial import Pose
from pld_ros.core.stage_machine import StageUpdate
from pld_ros.graph import HEARTBEAT_TOPIC
from pld_ros.nodes.diagnostics import MetricTopics, diagnostics_publisher, publish_status
from pld_ros.nodes.heartbeat import start_heartbeat
from pld_ros.nodes.observations import ViewCache
from pld_ros.nodes.qos import EVENTS_QOS, LATCHED_QOS
from pld_ros.nodes.runner import NodeConfigError, control_arm, load_node_profile, run_node

ESTOP_TOPIC = "/pld/estop"
"""Every arm driver latches its e-stop when true arrives here."""
HEARTBEAT_WINDOW = 2.0
"""s: a required node whose last heartbeat is older is not up (nodes beat at 2 Hz)."""
DIAGNOSTICS_PERIOD = 1.0
"""s between two /diagnostics reports."""
LOOP_PLOT_FILE = "loop.png"
"""The loop's timeline plot in the run directory (stage episodes only)."""


def _utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _pose_of(message: PoseMsg) -> Pose | None:
    # A driver that has never read its arm publishes an all-zero pose, which is not a rotation.
    try:
        return pose_of(message)
    except ValueError:
        return None


class SupervisorNode(Node):
    """The auto-reset: resets, starts, watches and ends episodes, and keeps the run's log."""

    def __init__(self) -> None:
        super().__init__("supervisor")
        profile = load_node_profile(self)
        episodes = int(self.declare_parameter("episodes", -1).value)
        # Nodes (fully qualified names) whose heartbeat must be seen before an episode starts: the
        # residual policy commands only within episodes, so nothing else shows it is up.
        requires: list[str] | None = self.declare_parameter("requires", Parameter.Type.STRING_ARRAY).value
        self._required = [str(name) for name in requires or ()]
        if profile.policies is None or profile.reward is None:
            raise NodeConfigError(
                f"profile {profile.name!r}: the supervisor needs 'policies' and 'reward' sections"
            )
        arm = control_arm(profile)
        self.profile = profile
        self.arm = arm
        first_id = last_episode_id(profile.supervisor.run_directory, profile.name) + 1
        self.core = EpisodeSupervisor(
            EpisodeSettings.from_profile(profile, episodes=None if episodes < 0 else episodes), first_id
        )

        views = dict.fromkeys((*profile.policies.base.views, *profile.reward.views))
        self._views = {
            view: ViewCache(self, [view], profile.cameras[view].stale_after, 1.0 / profile.cameras[view].fps)
            for view in views
        }
        # What arrived since the previous tick.
        self._command: SeenCommand | None = None
        self._scores: tuple[float, ...] | None = None
        self._failure = ""
        self._base_fresh_at: float | None = None
        # When each input of an episode was last seen (any base action, a hold included).
        self._seen: dict[str, float] = {}
        self._ready_window = profile.policies.base.timeout
        self._scene_future: Future | None = None
        self._homing_future: Future | None = None
        self._last_status: Status | None = None

        self._log: EpisodeLog | None = None
        self._records: list[EpisodeRecord] = []
        """The current run's ended episodes, for the loop statistics."""
        self._summary_written = True
        self._exit_when_done = profile.supervisor.autostart
        self._goal: ServerGoalHandle | None = None
        self._goal_done: Future | None = None

        self.create_subscription(RobotState, f"{arm}/state", self._on_state, 10)
        self.create_subscription(DeltaPoseCommand, f"{arm}/command", self._on_command, 10)
        self.create_subscription(SuccessScores, "reward/scores", self._on_scores, 10)
        self.create_subscription(BaseAction, "policy/base/action", self._on_base_action, 10)
        self.create_subscription(Header, HEARTBEAT_TOPIC, self._on_heartbeat, 10)
        self.create_subscription(String, "stage/failure", self._on_failure, 10)
        self._command_pub = self.create_publisher(DeltaPoseCommand, f"{arm}/command", 10)
        self._events_pub = self.create_publisher(EpisodeEvent, "episode/events", EVENTS_QOS)
        self._status_pub = self.create_publisher(EpisodeStatus, "episode/status", 10)
        self._stage_pub = self.create_publisher(StageState, "stage/state", 10)
        self._loop_pub = self.create_publisher(LoopStats, "loop/stats", LATCHED_QOS)
        self._estop_pub = self.create_publisher(Bool, ESTOP_TOPIC, 10)
        self._diag_pub = diagnostics_publisher(self)
        self._metrics = MetricTopics(self, "episode")
        # The tick runs on each arm state: a tick slower than the control period delays the next.
        self.timing = TickTiming(1.0 / profile.supervisor.control_rate)
        self._scene_client: Client | None = (
            self.create_client(ResetScene, "sim/reset_scene") if profile.simulated else None
        )
        self._home_client: Client = self.create_client(Trigger, f"{arm}/home")
        # Callbacks that await other callbacks run in groups of their own: a waiting coroutine keeps
        # its group busy, so its answer (or the tick it waits for) must come through another group.
        clients = MutuallyExclusiveCallbackGroup()
        self._arm_estops: dict[str, Client] = {
            name: self.create_client(EStop, f"{name}/estop", callback_group=clients) for name in profile.arms
        }
        self.create_service(Trigger, "supervisor/pause", self._on_pause)
        self.create_service(Trigger, "supervisor/resume", self._on_resume)
        self.create_service(Trigger, "supervisor/stop", self._on_stop)
        self.create_service(
            EStop, "supervisor/estop", self._on_estop, callback_group=MutuallyExclusiveCallbackGroup()
        )
        self._action = ActionServer(
            self,
            RunEpisodes,
            "supervisor/run_episodes",
            execute_callback=self._execute_run,
            goal_callback=self._on_goal,
            cancel_callback=lambda _: CancelResponse.ACCEPT,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self.create_timer(DIAGNOSTICS_PERIOD, self._publish_diagnostics)
        start_heartbeat(self)

        settings = self.core.settings
        self.get_logger().info(
            f"supervising arm {arm!r}: mode {settings.mode.name.lower()}, {settings.warmup_episodes} warm-up "
            f"episodes, K={settings.max_probe_steps}, {settings.max_episode_steps} steps per episode"
        )
        if profile.supervisor.autostart:
            self._start_run(RunRequest(episodes=settings.episodes, successes=settings.successes))
        else:
            self.get_logger().info("waiting for a goal on supervisor/run_episodes")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # -- inputs --------------------------------------------------------------------------------

    def _on_command(self, msg: DeltaPoseCommand) -> None:
        try:
            source = Source(msg.source.value)
        except ValueError:
            self.get_logger().warning(
                f"command with unknown source {msg.source.value} ignored", throttle_duration_sec=5.0
            )
            return
        if source is not Source.RESET:  # our own reset motion is not a policy's step
            self._command = SeenCommand(source, int(msg.step))

    def _on_scores(self, msg: SuccessScores) -> None:
        self._scores = tuple(float(p) for p in msg.probabilities)
        self._seen["success scores"] = self._now()

    def _on_failure(self, msg: String) -> None:
        # Several reports within one tick fail the stage once, for the first cause.
        self._failure = self._failure or msg.data or "failure detector"

    def _on_base_action(self, msg: BaseAction) -> None:
        now = self._now()
        self._seen["base actions"] = now
        if msg.fresh:
            self._base_fresh_at = now

    def _on_heartbeat(self, msg: Header) -> None:
        if msg.frame_id in self._required:
            self._seen[msg.frame_id] = self._now()

    def _not_ready(self, now: float) -> str:
        """Which inputs of an episode are missing; an episode starts only when none is."""
        missing = [
            what
            for what in ("base actions", "success scores", *self._required)
            if now - self._seen.get(what, -math.inf) > max(self._ready_window, HEARTBEAT_WINDOW)
        ]
        return f"no {', '.join(missing)} yet" if missing else ""

    def _stale_cameras(self, now: float) -> tuple[str, ...]:
        stale: list[str] = []
        for cache in self._views.values():
            newest = cache.newest(now)
            if isinstance(newest, NoSet):
                stale.extend(newest.stale)
        return tuple(stale)

    # -- the tick ------------------------------------------------------------------------------

    def _on_state(self, state: RobotState) -> None:
        started = time.perf_counter()
        self._tick(state)
        self.timing.record(started, time.perf_counter() - started)

    def _tick(self, state: RobotState) -> None:
        now = self._now()
        if self._goal is not None and self._goal.is_cancel_requested:
            self.core.stop("run_episodes goal cancelled")
        scene_busy = self._scene_future is not None and not self._scene_future.done()
        homing_busy = self._homing_future is not None and not self._homing_future.done()
        moving = state.mode == RobotState.MODE_MOVING
        tick = TickInput(
            now=now,
            wall_time=time.time(),
            arm_mode=ArmMode(state.mode),
            pose=_pose_of(state.ee_pose),
            target=_pose_of(state.ee_target) if moving else None,
            gripper_closure=float(state.gripper_closure),
            arm_error=state.error,
            command=self._command,
            scores=self._scores,
            base_fresh_at=self._base_fresh_at,
            stale_cameras=self._stale_cameras(now),
            scene_reset_busy=scene_busy,
            homing_busy=homing_busy,
            not_ready=self._not_ready(now),
            failure=self._failure,
        )
        self._command = None
        self._scores = None
        self._failure = ""
        out = self.core.tick(tick)

        for message in out.messages:
            self.get_logger().info(message)
        if out.command is not None:
            self._send_reset(out.command, state)
        if out.home_arm:
            self._home_arm()
        if out.reset_scene:
            self._reset_scene()
        for event in out.events:
            self._events_pub.publish(self._event_message(event, state))
        for record in out.records:
            if self._log is not None:
                self._log.append(record)
            self._records.append(record)
        if out.records and self.core.settings.stage_episodes:
            self._loop_pub.publish(self._loop_message(state))
        self._last_status = out.status
        self._status_pub.publish(self._status_message(out.status, state))
        self._stage_pub.publish(self._stage_message(out.stage, state))
        if self._goal is not None:
            self._goal.publish_feedback(RunEpisodes.Feedback(status=self._status_message(out.status, state)))
        if out.run_result is not None:
            self._end_run(out.run_result)

    def _send_reset(self, command: ResetCommand, state: RobotState) -> None:
        message = DeltaPoseCommand()
        message.header.stamp = state.header.stamp
        message.header.frame_id = state.header.frame_id
        message.translation.x, message.translation.y, message.translation.z = (
            float(v) for v in command.translation
        )
        message.rotation.x, message.rotation.y, message.rotation.z = (float(v) for v in command.rotation)
        message.gripper = float(command.gripper)
        message.source.value = int(Source.RESET)
        message.episode_id = command.episode_id
        message.base_action_age = math.nan
        self._command_pub.publish(message)

    def _home_arm(self) -> None:
        if (future := self._call_async(self._home_client, Trigger.Request(), "joint homing")) is not None:
            self._homing_future = future

    def _reset_scene(self) -> None:
        if self._scene_client is None:
            return  # hardware: no scene reset (a scripted one would be a world of its own)
        request = ResetScene.Request(randomize=True, seed=0)
        if (future := self._call_async(self._scene_client, request, "scene reset")) is not None:
            self._scene_future = future

    def _call_async(self, client: Client, request: Any, what: str) -> Future | None:
        """Call one of the reset's services without waiting for it: the core holds the reset while
        the call is in flight (homing_busy, scene_reset_busy). A missing service or a failed call
        is logged and the reset goes on; its timeout catches what that leaves undone. None: not
        called (the caller keeps the future of an earlier call that may still be in flight)."""
        if not client.service_is_ready():
            self.get_logger().warning(f"{client.srv_name} is not available: no {what}")
            return None
        future = client.call_async(request)
        future.add_done_callback(partial(self._on_answer, what))
        return future

    def _on_answer(self, what: str, future: Future) -> None:
        response = future.result()
        if response is None or not response.success:
            message = response.message if response is not None else "no response"
            self.get_logger().warning(f"{what} failed: {message}")
        else:
            self.get_logger().info(f"{what}: {response.message}")

    # -- runs ----------------------------------------------------------------------------------

    def _start_run(self, request: RunRequest) -> None:
        name = run_directory_name(self.profile.name, _utc_stamp())
        directory = self.profile.supervisor.run_directory / name
        # Two runs started within the same second (back-to-back goals) get a directory each.
        suffix = 1
        while directory.exists():
            suffix += 1
            directory = directory.with_name(f"{name}-{suffix}")
        self._log = EpisodeLog(directory)
        self._records = []
        self._summary_written = False
        self.core.start(request)
        self.get_logger().info(f"run log: {directory}")

    def _end_run(self, result: RunResult) -> None:
        self._write_summary()
        if self._goal_done is not None:
            self._goal_done.set_result(result)
        elif self._exit_when_done:
            # The autostarted run is the graph's run: its end (count reached, or stopped) ends it.
            self.get_logger().info(f"{result.reason}: exiting")
            self.context.try_shutdown()

    def _write_summary(self) -> None:
        if self._log is None or self._summary_written:
            return
        self._summary_written = True
        records = self._log.read()
        table = format_summary(summarize(records))
        loop = self.core.settings.stage_episodes
        if loop:
            table += "\n\n" + format_loop_summary(summarize_loop(records))
        (self._log.run_dir / SUMMARY_FILE).write_text(table + "\n")
        try:
            plot_outcomes(records, self._log.run_dir / PLOT_FILE)
            if loop:
                plot_loop(records, self._log.run_dir / LOOP_PLOT_FILE)
        except (OSError, ValueError) as exc:
            self.get_logger().error(f"cannot write the outcome plot: {exc}")
        self.get_logger().info(f"run summary ({self._log.run_dir}):\n{table}")

    def _loop_message(self, state: RobotState) -> LoopStats:
        summary = summarize_loop(self._records)
        stages = summary.stages
        message = LoopStats(
            robot_id=self.profile.robot_id,
            cycles=summary.cycles,
            mean_cycle_time=summary.mean_cycle_s,
            attempts=summary.attempts,
            recoveries=summary.recoveries,
            recovered=summary.recovered,
            interventions=summary.interventions,
            operating_time=summary.operating_s,
            longest_unattended=summary.longest_unattended_s,
            stages=list(stages),
            stage_attempts=[stats.attempts for stats in stages.values()],
            stage_successes=[stats.successes for stats in stages.values()],
            stage_success_rate=[stats.success_rate for stats in stages.values()],
            stage_mean_duration=[stats.mean_duration_s for stats in stages.values()],
        )
        message.header.stamp = state.header.stamp
        return message

    def _on_goal(self, goal: RunEpisodes.Goal) -> GoalResponse:
        if self.core.running:
            self.get_logger().warning("run_episodes goal rejected: a run is in progress")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    async def _execute_run(self, goal_handle: ServerGoalHandle) -> RunEpisodes.Result:
        goal = goal_handle.request
        done: Future[RunResult] = Future()
        self._goal, self._goal_done = goal_handle, done
        try:
            self._start_run(RunRequest(int(goal.episodes), int(goal.successes), RunMode(goal.mode.value)))
            result = await done
            assert result is not None  # set by _end_run, never None
        finally:
            self._goal, self._goal_done = None, None
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
        else:
            goal_handle.succeed()
        return RunEpisodes.Result(
            episodes=result.episodes,
            successes=result.successes,
            failures=result.failures,
            aborted=result.aborted,
            reason=result.reason,
        )

    # -- operator services ---------------------------------------------------------------------

    def _on_pause(self, _: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.core.pause()
        self.get_logger().info("paused: no new episode after the running one")
        response.success, response.message = True, "paused after the running episode"
        return response

    def _on_resume(self, _: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self.core.resume()
        self.get_logger().info("resumed")
        response.success, response.message = True, "resumed"
        return response

    def _on_stop(self, _: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        running = self.core.running
        self.core.stop()
        self.get_logger().info("stop requested" if running else "stop requested: no run in progress")
        response.success = running
        response.message = "stopping the run" if running else "no run in progress"
        return response

    async def _on_estop(self, request: EStop.Request, response: EStop.Response) -> EStop.Response:
        if request.engage:
            self._estop_pub.publish(Bool(data=True))
            self.core.estop(True, request.reason or "operator")
            self.get_logger().error(f"e-stop engaged: {request.reason}")
            response.success, response.engaged, response.message = True, True, "e-stop engaged on every arm"
            return response
        failures = []
        for name, client in self._arm_estops.items():
            if not client.service_is_ready():
                failures.append(f"{name}: e-stop service not available")
                continue
            answer = await client.call_async(EStop.Request(engage=False, reason=request.reason))
            if answer is None or not answer.success:
                failures.append(f"{name}: {answer.message if answer is not None else 'no answer'}")
        if failures:
            response.success, response.engaged = False, True
            response.message = "; ".join(failures)
            self.get_logger().error(f"e-stop not cleared: {response.message}")
            return response
        self.core.estop(False)
        self.get_logger().warning("e-stop cleared")
        response.success, response.engaged, response.message = True, False, "e-stop cleared on every arm"
        return response

    # -- outputs -------------------------------------------------------------------------------

    def _event_message(self, event: Event, state: RobotState | None) -> EpisodeEvent:
        message = EpisodeEvent(
            robot_id=self.profile.robot_id,
            episode_id=event.episode_id,
            event=int(event.kind),
            step=event.step,
            probe_steps=event.probe_steps,
            reason=event.reason,
            stage=event.stage,
        )
        message.header.stamp = state.header.stamp if state is not None else self.get_clock().now().to_msg()
        message.phase.value = int(event.phase)
        message.outcome.value = int(event.outcome)
        message.mode.value = int(event.mode)
        if event.kind is EventKind.ENDED and event.outcome is Outcome.ABORTED:
            self.get_logger().warning(f"episode {event.episode_id} aborted: {event.reason}")
        return message

    def _status_message(self, status: Status, state: RobotState) -> EpisodeStatus:
        message = EpisodeStatus(
            robot_id=self.profile.robot_id,
            episode_id=status.episode_id,
            step=status.step,
            probe_steps=status.probe_steps,
            success=status.success,
            success_probability=status.success_probability,
            stage_index=status.stage_index,
            stage_name=status.stage_name,
            paused=status.paused,
            estopped=status.estopped,
            episodes_completed=status.episodes_completed,
            successes=status.successes,
            aborted=status.aborted,
        )
        message.header.stamp = state.header.stamp
        message.phase.value = int(status.phase)
        message.mode.value = int(status.mode)
        message.last_outcome.value = int(status.last_outcome)
        return message

    def _stage_message(self, stage: StageUpdate, state: RobotState) -> StageState:
        message = StageState(
            index=stage.index,
            name=stage.name,
            status=int(stage.status),
            success_probability=stage.success_probability,
            positive_streak=stage.positive_streak,
            time_in_stage=stage.time_in_stage,
            cycle=stage.cycle,
            reason=stage.reason,
        )
        message.header.stamp = state.header.stamp
        return message

    def _publish_diagnostics(self) -> None:
        status = self._last_status
        timing = self.timing.stats()
        values: dict[str, Any] = {
            "run_directory": str(self._log.run_dir) if self._log else "",
            **timing.values(),
        }
        metrics = {"tick_latency_p99_ms": timing.latency_p99 * 1e3, "deadline_misses": timing.deadline_misses}
        if status is None:
            level, text = DiagnosticStatus.WARN, f"no state from {self.arm}/state yet"
        else:
            if status.estopped:
                level, text = DiagnosticStatus.ERROR, "e-stopped"
            elif status.paused:
                level, text = DiagnosticStatus.WARN, "paused"
            else:
                level, text = DiagnosticStatus.OK, status.phase.name.lower()
            values.update(
                episode=status.episode_id,
                phase=status.phase.name,
                mode=status.mode.name,
                step=status.step,
                running=status.running,
                episodes=status.episodes_completed,
                successes=status.successes,
                aborted=status.aborted,
                last_outcome=status.last_outcome.name,
            )
            counted = status.episodes_completed - status.aborted
            metrics.update(
                episodes=status.episodes_completed,
                successes=status.successes,
                aborted=status.aborted,
                # An abort is neither success nor failure (as in the run's summary).
                success_rate=status.successes / counted if counted else math.nan,
            )
        publish_status(
            self,
            self._diag_pub,
            level=level,
            name="pld/supervisor",
            hardware_id=self.profile.robot_id,
            message=text,
            values=values,
        )
        self._metrics.publish(metrics)

    def destroy_node(self) -> None:
        # A run cut short by a shutdown still logs its running episode, and gets its summary and plot.
        events, records = self.core.close("supervisor shut down", self._now(), time.time())
        # The record and the summary first: they must survive whatever happens to the graph.
        for record in records:
            if self._log is not None:
                self._log.append(record)
        self._write_summary()
        for event in events:
            try:
                self._events_pub.publish(self._event_message(event, None))
            except RCLError:
                # SIGINT shuts the context down from another thread, possibly right now.
                if self.context.ok():
                    raise
                break
        super().destroy_node()


def main() -> None:
    sys.exit(run_node(SupervisorNode))


if __name__ == "__main__":
    main()
