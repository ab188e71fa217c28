"""The episode supervisor's logic, without ROS: reset, start, watch and end episodes, unattended.

One :meth:`EpisodeSupervisor.tick` per control tick (the arm state) takes what the node has seen
since the previous tick (:class:`TickInput`) and says what to do (:class:`TickOutput`): the reset
command to send, the events to publish, whether to reset the scene, and the status. An episode
(docs/policy_layer.md):

1. RESETTING: with ``home_joints``, first have the arm driver move to the arm's home joint
   configuration and wait for it; then open the gripper and move to the home pose plus a uniform
   random offset (clipped into the workspace), one clipped delta per tick; once there, reset the
   scene; then wait until the arm has been still for ``settle_time``. A joint homing longer than
   ``homing_timeout``, or a reset longer than ``reset_timeout`` after it, ends the episode as
   ABORTED and the next reset starts.
2. STARTED: the mode (BASE_ONLY for the first ``warmup_episodes`` non-aborted episodes, then the
   run's) and the probe length k ~ U[0, K].
3. PROBING, then TAKEOVER when the first COMBINED command is seen.
4. ENDED: SUCCESS when the stage machine reaches "done"; FAILURE at the step limit or when a stage
   fails to "abort"; ABORTED on any fault or an operator's stop or e-stop. A fault always wins
   over a success seen at the same tick: a faulty episode is never a success or a failure.

With ``stage_episodes`` (a long-horizon loop) an episode is one attempt at one stage: it ends
SUCCESS or FAILURE at the stage's own transition (a failure detector and the step limit fail the
stage too, so they follow its ``on_failure`` route), and the next episode starts at the stage the
machine routed to, at the next tick and without a reset. Only a terminal "done" or "abort", or an
ABORTED episode, bring a full reset (arm home, scene reset) and the first stage again.

Between episodes the supervisor waits while it is paused, e-stopped, or a fault (arm, camera)
persists, and goes on by itself once it clears.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from pld_ros.core.arm_controller import ArmMode
from pld_ros.core.episode_log import ABORTED, FAILURE, SUCCESS, EpisodeRecord
from pld_ros.core.safety import step_toward
from pld_ros.core.spatial import FloatArray, Pose, rotation_angle_between
from pld_ros.core.stage_machine import StageMachine, StageStatus, StageUpdate, TaskOutcome
from pld_ros.profile import Profile, Stage


class Phase(IntEnum):
    """Same values as pld_msgs/EpisodePhase."""

    IDLE = 0
    RESETTING = 1
    PROBING = 2
    TAKEOVER = 3
    DONE = 4


class Outcome(IntEnum):
    """Same values as pld_msgs/EpisodeOutcome."""

    NONE = 0
    SUCCESS = 1
    FAILURE = 2
    ABORTED = 3


class RunMode(IntEnum):
    """Same values as pld_msgs/RunMode."""

    BASE_ONLY = 0
    PROBE_TAKEOVER = 1
    RESIDUAL_ONLY = 2

    @staticmethod
    def parse(name: str) -> RunMode:
        """The mode of a profile's ``supervisor.mode`` ("probe_takeover", ...)."""
        try:
            return RunMode[name.upper()]
        except KeyError:
            raise ValueError(f"unknown run mode {name!r}") from None


class Source(IntEnum):
    """Same values as pld_msgs/ActionSource."""

    BASE = 0
    RESIDUAL = 1
    COMBINED = 2
    HUMAN = 3
    RESET = 4


class EventKind(IntEnum):
    """Same values as the constants of pld_msgs/EpisodeEvent."""

    STARTED = 0
    PHASE_CHANGED = 1
    ENDED = 2


_RECORD_OUTCOMES = {Outcome.SUCCESS: SUCCESS, Outcome.FAILURE: FAILURE, Outcome.ABORTED: ABORTED}
_HEALTHY_ARM = (ArmMode.IDLE, ArmMode.MOVING, ArmMode.HOLDING)


@dataclass(frozen=True)
class EpisodeSettings:
    """What the supervisor needs of a profile, plus its own tolerances."""

    stages: tuple[Stage, ...]
    workspace_min: tuple[float, float, float]
    workspace_max: tuple[float, float, float]
    max_translation_step: float
    """Largest reset step per tick, m (the arm's safety limit)."""
    max_rotation_step: float
    """Largest reset rotation per tick, rad (the arm's safety limit)."""
    max_episode_steps: int = 200
    mode: RunMode = RunMode.PROBE_TAKEOVER
    episodes: int = 0
    """Episodes per run, aborted ones not counted; 0 runs until stopped."""
    successes: int = 0
    """Successes after which a run stops; 0: no target."""
    warmup_episodes: int = 10
    max_probe_steps: int = 40
    """K of k ~ U[0, K]."""
    stage_episodes: bool = False
    """One episode per stage attempt (the profile's ``supervisor.episode_scope: stage``)."""
    train_stages: tuple[str, ...] = ()
    """Stages whose episodes use the run's mode; the others run BASE_ONLY and do not count toward
    the warm-up. Empty: every stage."""
    home_position: tuple[float, float, float] | None = None
    """None: the arm's position at the first tick."""
    home_orientation: tuple[float, float, float, float] | None = None
    """None: the arm's orientation at the first tick."""
    home_randomization: float = 0.03
    home_joints: bool = False
    """Start each reset with the arm driver's joint-space homing (the profile's
    ``supervisor.home_joints_on_reset``)."""
    settle_time: float = 0.5
    homing_timeout: float = 40.0
    reset_timeout: float = 20.0
    """Counted from the end of the joint homing when there is one."""
    base_timeout: float = 2.0
    """Seconds without a fresh base action after which an episode is aborted."""
    max_missing_ticks: int = 10
    """Ticks an episode may go without a command or without scores before it is aborted (the
    policy nodes react one tick late, and a late inference may skip a tick or two)."""
    max_reset_failures: int = 3
    """Resets in a row that may time out before the run stops: the scene needs a human then."""
    reach_tolerance: float = 0.005
    """Distance to the reset goal below which the arm counts as home, m."""
    reach_rotation_tolerance: float = 0.05
    """Angle to the reset goal below which the arm counts as home, rad."""
    gripper_open_tolerance: float = 0.1
    """Measured closure below which the gripper counts as open."""
    still_step: float = 0.0005
    """Largest position change per tick of an arm that counts as still, m (1 cm/s at 20 Hz)."""
    still_rotation_step: float = 0.005
    """Largest rotation per tick of an arm that counts as still, rad."""
    seed: int | None = None
    """Seed of the offsets and probe lengths; None draws a fresh one."""

    @staticmethod
    def from_profile(profile: Profile, episodes: int | None = None) -> EpisodeSettings:
        """The settings of ``profile``'s control arm; ``episodes`` overrides the profile's count."""
        if profile.reward is None or profile.policies is None:
            raise ValueError(f"profile {profile.name!r} needs 'policies' and 'reward' to run episodes")
        arm = profile.arms[profile.control_arm].safety
        supervisor = profile.supervisor
        return EpisodeSettings(
            stages=profile.reward.stages,
            workspace_min=arm.workspace_min,
            workspace_max=arm.workspace_max,
            max_translation_step=arm.max_translation_step,
            max_rotation_step=arm.max_rotation_step,
            max_episode_steps=supervisor.max_episode_steps,
            mode=RunMode.parse(supervisor.mode),
            episodes=supervisor.episodes if episodes is None else episodes,
            successes=supervisor.successes,
            warmup_episodes=supervisor.warmup_episodes,
            max_probe_steps=profile.policies.residual.max_probe_steps,
            stage_episodes=supervisor.episode_scope == "stage",
            train_stages=supervisor.train_stages,
            home_position=supervisor.home_position,
            home_orientation=supervisor.home_orientation,
            home_randomization=supervisor.home_randomization,
            home_joints=supervisor.home_joints_on_reset,
            settle_time=supervisor.settle_time,
            homing_timeout=supervisor.homing_timeout,
            reset_timeout=supervisor.reset_timeout,
            base_timeout=profile.policies.base.timeout,
            seed=profile.simulation.seed if profile.simulation is not None else None,
        )


@dataclass(frozen=True)
class SeenCommand:
    """The newest command another node sent the arm since the previous tick."""

    source: Source
    step: int
    """The step the command says it is for."""


@dataclass(frozen=True)
class TickInput:
    """What the node saw up to this tick. Times are seconds on the node's monotonic clock."""

    now: float
    wall_time: float
    """Unix time, for the episode log."""
    arm_mode: ArmMode
    pose: Pose | None
    """Measured end-effector pose; None when the arm has never been read."""
    target: Pose | None = None
    """The pose the arm driver tracks (valid while MOVING)."""
    gripper_closure: float = 0.0
    arm_error: str = ""
    command: SeenCommand | None = None
    scores: Sequence[float] | None = None
    """Success probabilities that arrived since the previous tick (the newest), by stage head."""
    base_fresh_at: float | None = None
    """When the newest fresh base action arrived; None if none yet."""
    stale_cameras: tuple[str, ...] = ()
    scene_reset_busy: bool = False
    """A scene reset call is still in flight."""
    homing_busy: bool = False
    """A joint homing call is still in flight."""
    failure: str = ""
    """A failure detector fired since the previous tick (e.g. "part dropped"): the running stage
    fails and follows its ``on_failure`` route. "" when none did."""
    not_ready: str = ""
    """Why the policy side cannot run an episode yet (a node not up), "" when it can. Only
    consulted between episodes: within one, silence is a fault of its own."""


@dataclass(frozen=True)
class ResetCommand:
    """One tick of the reset motion: a delta-pose command with source RESET."""

    translation: FloatArray
    rotation: FloatArray
    gripper: float
    episode_id: int


@dataclass(frozen=True)
class Event:
    kind: EventKind
    episode_id: int
    phase: Phase
    outcome: Outcome
    mode: RunMode
    step: int
    probe_steps: int
    reason: str
    stage: str
    """The stage being worked on (for ENDED: the one it ended in)."""


@dataclass(frozen=True)
class Status:
    episode_id: int
    phase: Phase
    mode: RunMode
    last_outcome: Outcome
    step: int
    probe_steps: int
    success: bool
    success_probability: float
    stage_index: int
    stage_name: str
    paused: bool
    estopped: bool
    episodes_completed: int
    """Ended episodes of the current (or last) run, aborted ones included."""
    successes: int
    aborted: int
    running: bool
    """A run is in progress."""


@dataclass(frozen=True)
class RunRequest:
    """A run: stop after ``episodes`` episodes that are not aborted, or after ``successes``
    successes (0: no limit)."""

    episodes: int = 0
    successes: int = 0
    mode: RunMode | None = None
    """None: the profile's mode."""


@dataclass(frozen=True)
class RunResult:
    episodes: int
    successes: int
    failures: int
    aborted: int
    reason: str


@dataclass(frozen=True)
class TickOutput:
    command: ResetCommand | None
    events: tuple[Event, ...]
    records: tuple[EpisodeRecord, ...]
    """Episodes that ended at this tick, for the log."""
    reset_scene: bool
    """Call the world's scene reset now."""
    home_arm: bool
    """Call the arm driver's joint homing now."""
    status: Status
    stage: StageUpdate
    messages: tuple[str, ...]
    """What happened, in words, for the node's log."""
    run_result: RunResult | None = None
    """Set at the tick the run ends."""


@dataclass
class _Episode:
    episode_id: int
    mode: RunMode
    probe_steps: int
    goal: Pose
    reset_started_at: float
    homing_requested_at: float | None = None
    homed_at: float | None = None
    scene_requested_at: float | None = None
    still_since: float | None = None
    started_at: float = 0.0
    started_wall: float = 0.0
    step: int = 0
    last_command_step: int = 0
    last_scores_step: int = 0
    human_steps: int = 0
    continued: bool = False
    """Started where the previous episode ended, without a reset (stage episodes)."""
    recovering: bool = False
    """Its stage was entered through a failure edge."""
    trained: bool = True
    """It starts in a trained stage (``train_stages``): it counts toward the warm-up."""


@dataclass
class _Run:
    request: RunRequest
    episodes: int = 0
    successes: int = 0
    failures: int = 0
    aborted: int = 0


@dataclass
class _Tick:
    command: ResetCommand | None = None
    events: list[Event] = field(default_factory=list)
    records: list[EpisodeRecord] = field(default_factory=list)
    reset_scene: bool = False
    home_arm: bool = False
    messages: list[str] = field(default_factory=list)
    run_result: RunResult | None = None


class EpisodeSupervisor:
    """Runs episodes one tick at a time; operator requests take effect at the next tick."""

    def __init__(self, settings: EpisodeSettings, first_episode_id: int = 1) -> None:
        """``first_episode_id``: the id of the first episode (ids then count up by one)."""
        if settings.max_probe_steps < 0 or settings.max_episode_steps < 1:
            raise ValueError("max_probe_steps must be >= 0 and max_episode_steps >= 1")
        if first_episode_id < 1:
            raise ValueError(f"episode ids start at 1, got {first_episode_id}")
        self.settings = settings
        self.stages = StageMachine(settings.stages)
        self._rng = np.random.default_rng(settings.seed)
        self._low = np.asarray(settings.workspace_min, dtype=np.float64)
        self._high = np.asarray(settings.workspace_max, dtype=np.float64)
        self._phase = Phase.IDLE
        self._episode: _Episode | None = None
        self._last_id = first_episode_id - 1
        self._last_outcome = Outcome.NONE
        self._completed = 0
        """Non-aborted episodes of trained stages ever ended: they count toward the warm-up."""
        self._continue = False
        """The last episode was a stage that routed to another stage: the next one starts there,
        without a reset."""
        self._run: _Run | None = None
        self._last_run: _Run | None = None
        """The current run, or the last one after it ended (for the status)."""
        self._paused = False
        self._reset_failures = 0
        """Resets that timed out since the last episode started."""
        self._estop: str | None = None
        self._pending_stop: str | None = None
        self._pending_start: RunRequest | None = None
        self._home: Pose | None = None
        self._previous_pose: Pose | None = None
        self._waiting = ""
        self._stage = self._idle_stage()

    # -- operator requests -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._run is not None or self._pending_start is not None

    @property
    def phase(self) -> Phase:
        return self._phase

    def start(self, request: RunRequest | None = None) -> None:
        """Start a run (the profile's count and mode by default); refused while one runs."""
        if self.running:
            raise RuntimeError("a run is already in progress")
        self._pending_start = request or RunRequest(episodes=self.settings.episodes)

    def pause(self) -> None:
        """Start no new episode after the running one ends (it is not cut short)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def stop(self, reason: str = "stopped by operator") -> None:
        """End the run; a running episode ends ABORTED. Nothing to do when no run is in progress."""
        if self._run is None:
            self._pending_start = None
            return
        self._pending_stop = reason

    def estop(self, engage: bool, reason: str = "") -> None:
        """Engaged: the running episode ends ABORTED and none starts until it is cleared."""
        self._estop = (reason or "e-stop") if engage else None

    def close(
        self, reason: str, now: float, wall_time: float
    ) -> tuple[tuple[Event, ...], tuple[EpisodeRecord, ...]]:
        """End a running episode as ABORTED because the supervisor goes away; its event and record."""
        if self._phase not in (Phase.PROBING, Phase.TAKEOVER) or self._run is None:
            return (), ()
        out = _Tick()
        self._end(now, wall_time, Outcome.ABORTED, reason, out)
        return tuple(out.events), tuple(out.records)

    # -- the tick ------------------------------------------------------------------------------

    def tick(self, tick: TickInput) -> TickOutput:
        out = _Tick()
        if self._pending_start is not None and self._run is None:
            self._run = self._last_run = _Run(self._pending_start)
            self._pending_start = None
            request = self._run.request
            limit = f"{request.episodes} episodes" if request.episodes else "until stopped"
            out.messages.append(
                f"run started: {limit}" + (f", {request.successes} successes" if request.successes else "")
            )
        fault = self._fault(tick)
        if self._home is None and tick.pose is not None and not fault:
            # Only a healthy arm's pose: a disconnected driver publishes a placeholder.
            self._home = self._home_pose(tick.pose)
        if self._phase in (Phase.PROBING, Phase.TAKEOVER):
            self._run_episode(tick, fault, out)
        elif self._phase is Phase.RESETTING:
            self._reset(tick, fault, out)
        # An episode that ended at this tick shows DONE for the tick; the next reset starts after.
        elif self._phase in (Phase.IDLE, Phase.DONE):
            self._between_episodes(tick, fault, out)
        self._previous_pose = tick.pose
        return TickOutput(
            command=out.command,
            events=tuple(out.events),
            records=tuple(out.records),
            reset_scene=out.reset_scene,
            home_arm=out.home_arm,
            status=self._status(),
            stage=self._stage,
            messages=tuple(out.messages),
            run_result=out.run_result,
        )

    # -- faults --------------------------------------------------------------------------------

    def _fault(self, tick: TickInput) -> str:
        """Why no episode may run now ("" when nothing is wrong)."""
        if tick.arm_mode not in _HEALTHY_ARM or tick.pose is None:
            detail = f": {tick.arm_error}" if tick.arm_error else ""
            return f"arm {tick.arm_mode.name.lower()}{detail}"
        if tick.stale_cameras:
            plural = "s" if len(tick.stale_cameras) > 1 else ""
            return f"camera{plural} {', '.join(tick.stale_cameras)} stale"
        return ""

    def _episode_fault(self, tick: TickInput, episode: _Episode) -> str:
        """Faults that only an episode can have: the policy side gone quiet."""
        since = max(tick.base_fresh_at if tick.base_fresh_at is not None else -math.inf, episode.started_at)
        if tick.now - since > self.settings.base_timeout:
            return f"base policy stale for {tick.now - since:.1f} s"
        missing = episode.step - episode.last_command_step
        if missing > self.settings.max_missing_ticks:
            return f"no command for {missing} ticks"
        missing = episode.step - episode.last_scores_step
        if missing > self.settings.max_missing_ticks:
            return f"no success scores for {missing} ticks"
        return ""

    # -- between episodes ----------------------------------------------------------------------

    def _between_episodes(self, tick: TickInput, fault: str, out: _Tick) -> None:
        if self._run is None:
            return
        if self._pending_stop is not None:
            self._finish_run(self._pending_stop, out)
            return
        complete = self._run_complete(self._run)
        if complete:
            self._finish_run(complete, out)
            return
        waiting = (
            "paused"
            if self._paused
            else f"e-stop: {self._estop}"
            if self._estop is not None
            else fault or tick.not_ready or ("no arm pose yet" if self._home is None else "")
        )
        if waiting:
            if waiting != self._waiting:
                out.messages.append(f"waiting: {waiting}")
            self._waiting = waiting
            self._phase = Phase.IDLE
            return
        self._waiting = ""
        if self._continue:
            self._continue_loop(tick, out)
        else:
            self._begin_reset(tick, out)

    def _run_complete(self, run: _Run) -> str:
        """Why the run is complete, or "" while it is not."""
        request = run.request
        if request.successes and run.successes >= request.successes:
            return "success count reached"
        # An aborted episode says nothing about the policy: it is retried rather than counted.
        if request.episodes and run.episodes - run.aborted >= request.episodes:
            return "episode count reached"
        return ""

    def _finish_run(self, reason: str, out: _Tick) -> None:
        run = self._run
        assert run is not None
        out.run_result = RunResult(run.episodes, run.successes, run.failures, run.aborted, reason)
        out.messages.append(
            f"run ended ({reason}): {run.episodes} episodes, {run.successes} successes, "
            f"{run.failures} failures, {run.aborted} aborted"
        )
        self._run = None
        self._pending_stop = None
        self._phase = Phase.IDLE

    # -- reset ---------------------------------------------------------------------------------

    def _home_pose(self, measured: Pose) -> Pose:
        settings = self.settings
        position = settings.home_position if settings.home_position is not None else measured.position
        orientation = (
            settings.home_orientation if settings.home_orientation is not None else measured.orientation
        )
        return Pose.of(position, orientation)

    def _trained(self, stage: str) -> bool:
        return not self.settings.train_stages or stage in self.settings.train_stages

    def _mode_and_probe(self, stage: str) -> tuple[RunMode, int]:
        """The next episode's mode and probe length k, for an episode that starts in ``stage``."""
        assert self._run is not None
        settings = self.settings
        mode = self._run.request.mode if self._run.request.mode is not None else settings.mode
        if self._completed < settings.warmup_episodes or not self._trained(stage):
            mode = RunMode.BASE_ONLY
        if mode is RunMode.PROBE_TAKEOVER:
            return mode, int(self._rng.integers(0, settings.max_probe_steps, endpoint=True))
        # The base acts for the whole episode, or not at all.
        return mode, settings.max_episode_steps if mode is RunMode.BASE_ONLY else 0

    def _begin_reset(self, tick: TickInput, out: _Tick) -> None:
        assert self._run is not None and self._home is not None
        settings = self.settings
        radius = settings.home_randomization
        offset = self._rng.uniform(-radius, radius, size=3)
        goal = Pose(np.clip(self._home.position + offset, self._low, self._high), self._home.orientation)
        first = settings.stages[0].name
        mode, probe_steps = self._mode_and_probe(first)
        self._last_id += 1
        self._episode = _Episode(
            self._last_id, mode, probe_steps, goal, reset_started_at=tick.now, trained=self._trained(first)
        )
        self._stage = self._idle_stage()
        self._set_phase(Phase.RESETTING, "reset", out)
        x, y, z = goal.position
        out.messages.append(f"episode {self._last_id}: resetting to x={x:.3f} y={y:.3f} z={z:.3f}")
        self._reset(tick, "", out)

    def _reset(self, tick: TickInput, fault: str, out: _Tick) -> None:
        episode = self._episode
        assert episode is not None
        interruption = fault or (f"e-stop: {self._estop}" if self._estop is not None else "")
        interruption = interruption or ("paused" if self._paused else "") or (self._pending_stop or "")
        if interruption:
            # Nothing has started: the reset is dropped and starts over once the cause clears.
            out.messages.append(f"episode {episode.episode_id}: reset interrupted ({interruption})")
            self._phase = Phase.IDLE
            return
        assert tick.pose is not None  # _fault reports a missing pose
        settings = self.settings
        # The joint move's length varies with how far the episode took the joints, and with a
        # simulator's pace: it has a bound of its own, and the rest of the reset counts after it.
        homing = settings.home_joints and episode.homed_at is None
        since = episode.reset_started_at if episode.homed_at is None else episode.homed_at
        if tick.now - since > (settings.homing_timeout if homing else settings.reset_timeout):
            reason = self._reset_timeout_reason(tick, episode)
            self._end(tick.now, tick.wall_time, Outcome.ABORTED, reason, out)
            self._reset_failures += 1
            if self._reset_failures >= settings.max_reset_failures:
                self._pending_stop = f"{self._reset_failures} resets in a row failed, the last: {reason}"
            return
        if settings.home_joints and episode.homing_requested_at is None:
            out.home_arm = True
            episode.homing_requested_at = tick.now
            return
        if tick.homing_busy or episode.homing_requested_at == tick.now:
            return  # a Cartesian target now would preempt the joint move
        if settings.home_joints and episode.homed_at is None:
            episode.homed_at = tick.now
        out.command = self._reset_command(tick, episode)
        at_home = self._at_home(tick.pose, tick.gripper_closure, episode.goal)
        if at_home and episode.scene_requested_at is None:
            # The scene is reset with the arm out of the way and the gripper open (not holding it).
            out.reset_scene = True
            episode.scene_requested_at = tick.now
        settled = (
            at_home
            and episode.scene_requested_at is not None
            and tick.now > episode.scene_requested_at
            and not tick.scene_reset_busy
            and self._still(tick.pose)
        )
        if not settled:
            episode.still_since = None
            return
        if episode.still_since is None:
            episode.still_since = tick.now
        if tick.now - episode.still_since >= settings.settle_time:
            self._start(tick, episode, out)

    def _reset_timeout_reason(self, tick: TickInput, episode: _Episode) -> str:
        assert tick.pose is not None
        if self.settings.home_joints and episode.homed_at is None:
            return f"joint homing took longer than {self.settings.homing_timeout:.1f} s"
        distance = float(np.linalg.norm(episode.goal.position - tick.pose.position))
        if episode.scene_requested_at is None:
            scene = "not called"
        else:
            scene = "pending" if tick.scene_reset_busy else "done"
        after = " after the joint homing" if self.settings.home_joints else ""
        return (
            f"reset took longer than {self.settings.reset_timeout:.1f} s{after} "
            f"({distance * 1e3:.0f} mm from home, gripper closure {tick.gripper_closure:.2f}, "
            f"scene reset {scene})"
        )

    def _reset_command(self, tick: TickInput, episode: _Episode) -> ResetCommand:
        # Deltas integrate into the driver's target: stepping from the target (not the lagging
        # measured pose) converges on the goal without overshoot.
        base = tick.target if tick.arm_mode is ArmMode.MOVING and tick.target is not None else tick.pose
        assert base is not None
        translation, rotation = step_toward(
            base, episode.goal, self.settings.max_translation_step, self.settings.max_rotation_step
        )
        return ResetCommand(
            translation=translation,
            rotation=rotation,
            gripper=0.0,
            episode_id=episode.episode_id,
        )

    def _at_home(self, pose: Pose, gripper_closure: float, goal: Pose) -> bool:
        settings = self.settings
        return (
            float(np.linalg.norm(goal.position - pose.position)) <= settings.reach_tolerance
            and rotation_angle_between(goal.orientation, pose.orientation)
            <= settings.reach_rotation_tolerance
            and gripper_closure <= settings.gripper_open_tolerance
        )

    def _still(self, pose: Pose) -> bool:
        previous = self._previous_pose
        if previous is None:
            return False
        return (
            float(np.linalg.norm(pose.position - previous.position)) <= self.settings.still_step
            and rotation_angle_between(pose.orientation, previous.orientation)
            <= self.settings.still_rotation_step
        )

    # -- the episode ---------------------------------------------------------------------------

    def _continue_loop(self, tick: TickInput, out: _Tick) -> None:
        """Start the next stage's episode where the last one ended: no reset, no scene reset."""
        assert tick.pose is not None  # a fault (no pose) keeps the supervisor waiting
        stage = self.stages.stage.name
        mode, probe_steps = self._mode_and_probe(stage)
        self._last_id += 1
        episode = _Episode(
            self._last_id,
            mode,
            probe_steps,
            tick.pose,
            reset_started_at=tick.now,
            continued=True,
            trained=self._trained(stage),
        )
        self._episode = episode
        self._start(tick, episode, out)

    def _start(self, tick: TickInput, episode: _Episode, out: _Tick) -> None:
        self._reset_failures = 0
        episode.started_at = tick.now
        episode.started_wall = tick.wall_time
        if episode.continued:
            # The stage's clock restarts with the episode: the pause between them is not its time.
            self.stages.restart_stage(tick.now)
        else:
            self.stages.reset(tick.now)
        self._stage = self.stages.snapshot(tick.now)
        episode.recovering = self._stage.status is StageStatus.RECOVERING
        phase = Phase.TAKEOVER if episode.mode is RunMode.RESIDUAL_ONLY else Phase.PROBING
        self._phase = phase
        out.events.append(self._event(EventKind.STARTED, Outcome.NONE, "started"))
        where = f", stage {self._stage.name}" if self.settings.stage_episodes else ""
        out.messages.append(
            f"episode {episode.episode_id} started: mode {episode.mode.name.lower()}, "
            f"k={episode.probe_steps}{where}"
        )

    def _run_episode(self, tick: TickInput, fault: str, out: _Tick) -> None:
        episode = self._episode
        assert episode is not None
        episode.step += 1
        command = tick.command
        if command is not None and command.source is not Source.RESET:
            episode.last_command_step = episode.step
            episode.human_steps += command.source is Source.HUMAN
            if command.source is Source.COMBINED and self._phase is Phase.PROBING:
                self._set_phase(Phase.TAKEOVER, f"takeover at step {command.step}", out)
                out.messages.append(
                    f"episode {episode.episode_id}: probe -> takeover at step {command.step} "
                    f"(k={episode.probe_steps})"
                )
        if tick.scores is not None:
            episode.last_scores_step = episode.step
        stop = self._pending_stop
        estop = f"e-stop: {self._estop}" if self._estop is not None else ""
        # The operator's request names the cause, before the arm fault it causes.
        fault = estop or stop or fault or self._episode_fault(tick, episode)
        if fault:
            self._end(tick.now, tick.wall_time, Outcome.ABORTED, fault, out)
            return
        if tick.failure:
            self._stage = self.stages.fail(tick.failure, tick.now)
        elif tick.scores is not None:
            try:
                self._stage = self.stages.update(tick.scores, tick.now)
            except ValueError as exc:  # scores that do not fit the stages: a reward misconfigured
                self._end(tick.now, tick.wall_time, Outcome.ABORTED, f"bad success scores: {exc}", out)
                return
        else:
            self._stage = self.stages.snapshot(tick.now)
        if self.settings.stage_episodes:
            self._end_stage_episode(tick, episode, out)
            return
        if self._stage.outcome is TaskOutcome.SUCCESS:
            self._end(tick.now, tick.wall_time, Outcome.SUCCESS, f"success: {self._stage.reason}", out)
        elif self._stage.outcome is TaskOutcome.FAILURE:
            self._end(tick.now, tick.wall_time, Outcome.FAILURE, self._stage.reason, out)
        elif episode.step >= self.settings.max_episode_steps:
            self._end(
                tick.now,
                tick.wall_time,
                Outcome.FAILURE,
                f"step limit ({self.settings.max_episode_steps} steps)",
                out,
            )

    def _end_stage_episode(self, tick: TickInput, episode: _Episode, out: _Tick) -> None:
        """A stage episode ends with its stage's transition; the step limit fails the stage."""
        stage = self._stage
        if stage.status not in (StageStatus.SUCCEEDED, StageStatus.FAILED):
            if episode.step < self.settings.max_episode_steps:
                return
            stage = self.stages.fail(f"step limit ({self.settings.max_episode_steps} steps)", tick.now)
            self._stage = stage
        outcome = Outcome.SUCCESS if stage.status is StageStatus.SUCCEEDED else Outcome.FAILURE
        self._end(tick.now, tick.wall_time, outcome, stage.reason, out)
        self._continue = not stage.done

    def _end(self, now: float, wall_time: float, outcome: Outcome, reason: str, out: _Tick) -> None:
        episode = self._episode
        run = self._run
        assert episode is not None and run is not None
        started = self._phase is not Phase.RESETTING
        self._phase = Phase.DONE
        self._last_outcome = outcome
        # Set again by a stage episode that routes on; anything else ends with a full reset.
        self._continue = False
        run.episodes += 1
        if outcome is Outcome.SUCCESS:
            run.successes += 1
        elif outcome is Outcome.FAILURE:
            run.failures += 1
        else:
            run.aborted += 1
        if outcome is not Outcome.ABORTED and episode.trained:
            self._completed += 1
        out.events.append(self._event(EventKind.ENDED, outcome, reason))
        out.records.append(
            EpisodeRecord(
                episode_id=episode.episode_id,
                mode=episode.mode.name.lower(),
                probe_steps=episode.probe_steps,
                outcome=_RECORD_OUTCOMES[outcome],
                reason=reason,
                steps=episode.step,
                duration_s=now - episode.started_at if started else 0.0,
                human_steps=episode.human_steps,
                started_at=episode.started_wall if started else wall_time,
                stage=self._stage.name if started else "",
                cycles=self._stage.cycle if started else 0,
                continued=episode.continued,
                recovering=episode.recovering,
            )
        )
        out.messages.append(
            f"episode {episode.episode_id} ended: {outcome.name} ({reason}) after {episode.step} steps"
        )

    # -- reporting -----------------------------------------------------------------------------

    def _set_phase(self, phase: Phase, reason: str, out: _Tick) -> None:
        self._phase = phase
        out.events.append(self._event(EventKind.PHASE_CHANGED, Outcome.NONE, reason))

    def _event(self, kind: EventKind, outcome: Outcome, reason: str) -> Event:
        episode = self._episode
        assert episode is not None
        return Event(
            kind=kind,
            episode_id=episode.episode_id,
            phase=self._phase,
            outcome=outcome,
            mode=episode.mode,
            step=episode.step,
            probe_steps=episode.probe_steps,
            reason=reason,
            stage=self._stage.name,
        )

    def _idle_stage(self) -> StageUpdate:
        first = self.settings.stages[0]
        return StageUpdate(0, first.name, StageStatus.ACTIVE, math.nan, 0, 0.0, 0, "")

    def _status(self) -> Status:
        episode = self._episode
        run = self._last_run
        stage = self._stage
        threshold = self.settings.stages[stage.index].threshold
        return Status(
            episode_id=episode.episode_id if episode else 0,
            phase=self._phase,
            mode=episode.mode if episode else self.settings.mode,
            last_outcome=self._last_outcome,
            step=episode.step if episode else 0,
            probe_steps=episode.probe_steps if episode else 0,
            success=stage.success_probability > threshold,
            success_probability=stage.success_probability,
            stage_index=stage.index,
            stage_name=stage.name,
            paused=self._paused,
            estopped=self._estop is not None,
            episodes_completed=run.episodes if run else 0,
            successes=run.successes if run else 0,
            aborted=run.aborted if run else 0,
            running=self.running,
        )
