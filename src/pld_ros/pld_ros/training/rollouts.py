"""Episodes in the simulated franka_pick_cube world without ROS: to collect demonstrations and to
evaluate a policy.

The loop drives the arm the way the robot graph does: franky-sim's arm through
:class:`~pld_ros.drivers.franky_arm.FrankyBackend` and :class:`~pld_ros.core.arm_controller.ArmController`
(the profile's safety limits, the arm driver's code path), at the profile's control rate in
simulated time (a :class:`~pld_ros.core.rate.RobotClock` on the arm's clock, as the arm driver
ticks in simulation: a loaded machine slows the episode down instead of changing what a tick
means). Each tick it reads the arm, renders the policy's views, asks the
policy for an action and records ``(views, proprio, action, success)``. As in the graph, where
the arm driver applies a command at its next tick, the action computed from the observation of
tick ``t`` is applied at tick ``t + 1``.

Between episodes the arm opens its hand, holds, returns to the profile's home joints (blocking),
moves by a uniform random offset of up to ``home_randomization`` per axis as the supervisor's
reset does, and the cube is put back at a random layout. An episode ends after ``max_steps`` ticks or once the
privileged success signal has held for ``success_ticks`` consecutive ticks.

Episodes are stored one ``.npz`` per episode (see :func:`save_episode`), written to a temporary
name, fsync'd and renamed, so a killed collection never leaves half an episode behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from pld_ros.core.arm_controller import ArmController, ArmMode
from pld_ros.core.atomic_file import atomic_write
from pld_ros.core.observation import (
    ACTION_DIM,
    PROPRIO_DIM,
    Float32Array,
    Observation,
    hold_action,
    proprio_vector,
)
from pld_ros.core.rate import RateKeeper, RobotClock
from pld_ros.core.safety import DeltaCommand, step_toward
from pld_ros.core.spatial import Pose
from pld_ros.drivers.arm import ArmFault, ArmState
from pld_ros.drivers.franky_arm import MOVE_TIMEOUT, FrankyBackend
from pld_ros.profile import FrankyArm, Profile
from pld_ros.sim.franka_pick_cube import FrankaPickCubeWorld

Policy = Callable[[Observation], npt.ArrayLike]
"""One action (ACTION_DIM) from one observation."""

EPISODE_SUFFIX = ".npz"
REACH_TOLERANCE = 0.002
"""m from the randomized start position at which the reset's move ends."""
START_OFFSET_STREAM = 1
"""Second seed word of the start offsets, so they are not drawn from the cube layout's stream."""


@dataclass(frozen=True)
class Episode:
    """One recorded episode; T ticks, V views in ``view_names`` order."""

    views: npt.NDArray[np.uint8]
    """T x V x H x W x 3 policy views."""
    proprio: Float32Array
    """T x PROPRIO_DIM measured proprioception."""
    actions: Float32Array
    """T x ACTION_DIM: the action computed from that tick's observation (applied the next tick)."""
    success: npt.NDArray[np.bool_]
    """T: the privileged success signal at that tick."""
    view_names: tuple[str, ...]
    seed: int
    """Seed of the cube layout."""
    succeeded: bool
    """The success signal held for the required number of consecutive ticks."""
    fault: str = ""
    """Why the episode was cut short by a robot error (e.g. franky's motion planner failing on a
    loaded machine); empty when it ran its course. Such an episode says nothing about the policy."""

    def __len__(self) -> int:
        return len(self.actions)


def save_episode(episode: Episode, path: Path) -> Path:
    """Write ``episode`` to ``path`` (.npz, compressed) atomically and durably
    (:func:`~pld_ros.core.atomic_file.atomic_write`)."""

    def write(out: BinaryIO) -> None:
        np.savez_compressed(
            out,
            views=episode.views,
            proprio=episode.proprio,
            actions=episode.actions,
            success=episode.success,
            view_names=np.array(episode.view_names),
            seed=np.int64(episode.seed),
            succeeded=np.bool_(episode.succeeded),
            fault=np.str_(episode.fault),
        )

    return atomic_write(path, write)


def load_episode(path: Path) -> Episode:
    """Read an episode written by :func:`save_episode`; raise ValueError for a malformed file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            episode = Episode(
                views=data["views"],
                proprio=data["proprio"].astype(np.float32),
                actions=data["actions"].astype(np.float32),
                success=data["success"].astype(bool),
                view_names=tuple(str(name) for name in data["view_names"]),
                seed=int(data["seed"]),
                succeeded=bool(data["succeeded"]),
                fault=str(data["fault"]) if "fault" in data else "",
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not an episode file: {exc}") from exc
    steps = len(episode.actions)
    if (
        episode.views.ndim != 5
        or episode.views.shape[:2] != (steps, len(episode.view_names))
        or episode.proprio.shape != (steps, PROPRIO_DIM)
        or episode.actions.shape != (steps, ACTION_DIM)
        or episode.success.shape != (steps,)
    ):
        raise ValueError(f"{path}: inconsistent episode arrays")
    return episode


def episode_files(directory: Path) -> list[Path]:
    """The complete episode files of a directory, in name order (temporary files are skipped)."""
    return sorted(p for p in directory.glob(f"*{EPISODE_SUFFIX}") if not p.name.startswith("."))


@dataclass(frozen=True)
class RolloutConfig:
    """How episodes run."""

    max_steps: int = 200
    """Ticks per episode at most (the profile's ``supervisor.max_episode_steps``)."""
    success_ticks: int = 3
    """Consecutive ticks of privileged success that end an episode as a success (the profile's
    lift stage debounces 3 frames)."""
    control_rate: float = 20.0
    """Hz of the policy loop (the profile's ``supervisor.control_rate``)."""
    open_timeout: float = 2.0
    """s to wait for the hand to open at a reset."""
    home_randomization: float = 0.0
    """Half-width of the uniform random offset of the start position from the home pose, m (the
    profile's ``supervisor.home_randomization``, so that episodes start where the graph's do)."""
    reach_ticks: int = 60
    """Ticks the move to the randomized start may take at most."""

    def __post_init__(self) -> None:
        if self.max_steps <= 0 or self.success_ticks <= 0 or self.control_rate <= 0.0:
            raise ValueError("max_steps, success_ticks and control_rate must be positive")


def rollout_config(profile: Profile) -> RolloutConfig:
    """The rollout settings a profile implies."""
    return RolloutConfig(
        max_steps=profile.supervisor.max_episode_steps,
        control_rate=profile.supervisor.control_rate,
        success_ticks=profile.reward.stages[0].debounce_frames if profile.reward else 3,
        home_randomization=profile.supervisor.home_randomization,
    )


class SimRollouts:
    """Runs episodes in a started :class:`FrankaPickCubeWorld` through the robot's arm control path.

    ``arm``: the profile's Franka arm (its host is replaced by the world's); ``views``: camera
    names rendered per tick, in the policy's order. The world's render size is the view size.
    The arm connects on the first episode; call :meth:`close` (or use ``with``) to let it go.
    """

    def __init__(
        self,
        world: FrankaPickCubeWorld,
        arm: FrankyArm,
        views: Sequence[str],
        config: RolloutConfig | None = None,
        *,
        prompt: str = "",
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        if not views:
            raise ValueError("at least one view is needed")
        self.world = world
        self.arm = arm.model_copy(update={"host": world.host})
        self.views = tuple(views)
        self.config = config or RolloutConfig()
        self.prompt = prompt
        self._log = log
        # franky-sim runs in this process: the arm must be at rest before the Robot is dropped,
        # however long a joint motion may take.
        backend = FrankyBackend(self.arm, close_timeout=MOVE_TIMEOUT)
        self.controller = ArmController(backend, self.arm.safety)
        self._connected = False

    def __enter__(self) -> SimRollouts:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.controller.close()

    # ---- arm ---------------------------------------------------------------------------------

    def _tick(self, command: DeltaCommand | None) -> ArmState:
        """One controller tick; raise ArmFault on a robot error or a lost connection (the
        controller has already recovered from the error when it can)."""
        errors = self.controller.counters["robot_errors"]
        report = self.controller.tick(command, time.monotonic())
        for event in report.events:
            self._log(f"arm: {event}")
        if report.state is None or report.mode in (ArmMode.DISCONNECTED, ArmMode.ERROR):
            raise ArmFault(f"arm is {report.mode.name.lower()}: {report.error}", connection_lost=True)
        if self.controller.counters["robot_errors"] != errors:
            raise ArmFault(f"robot error: {' '.join(report.events)}", connection_lost=False)
        return report.state

    def _connect(self) -> None:
        if self._connected:
            return
        deadline = time.monotonic() + 10.0
        while True:
            try:
                self._tick(None)
                break
            except ArmFault:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        # libfranka raises the thread that connects to SCHED_FIFO 99 when it may; this loop
        # renders and runs models for minutes and must not starve the physics thread or the machine.
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        self._connected = True

    def _rate(self) -> RateKeeper:
        clock = RobotClock(self.controller.backend.robot_time)
        return RateKeeper(self.config.control_rate, clock=clock.now, sleep=clock.sleep)

    def _let_go(self, rate: RateKeeper) -> None:
        # Stop commanding until the controller holds, so that the next command restarts the
        # target from the measured pose (after a joint motion), not from the old target.
        for _ in range(self.arm.safety.command_timeout_ticks + 1):
            rate.wait()
            self._tick(None)

    def _move_to(self, goal: Pose, rate: RateKeeper) -> None:
        """Step the arm to ``goal`` with delta commands within the safety limits."""
        limits = self.arm.safety
        command: DeltaCommand | None = None
        for _ in range(self.config.reach_ticks):
            rate.wait()
            state = self._tick(command)
            if float(np.linalg.norm(goal.position - state.ee_pose.position)) < REACH_TOLERANCE:
                return
            base = self.controller.safety.target or state.ee_pose
            translation, rotation = step_toward(
                base, goal, limits.max_translation_step, limits.max_rotation_step
            )
            command = DeltaCommand(translation, rotation, 0.0)

    def reset(self, seed: int | None) -> None:
        """Open the hand, return to the home joints, move by the random start offset and put the
        cube at a new random layout."""
        self._connect()
        rate = self._rate()
        deadline = time.monotonic() + self.config.open_timeout
        radius = self.config.home_randomization
        offset = np.random.default_rng(None if seed is None else (seed, START_OFFSET_STREAM)).uniform(
            -radius, radius, size=3
        )
        for attempt in range(3):
            try:
                while time.monotonic() < deadline:
                    rate.wait()
                    if self._tick(_command(hold_action(0.0))).gripper_closure < 0.02:
                        break
                self._let_go(rate)
                self.controller.backend.move_joints(self.arm.home_joints)
                if radius > 0.0:
                    rate.wait()
                    home = self._tick(None).ee_pose
                    self._move_to(Pose(home.position + offset, home.orientation), rate)
                    self._let_go(rate)
                break
            except ArmFault as fault:
                # On a loaded machine franky's planner now and then rejects its start state; the
                # controller recovers from the error on its next tick. The motion has not
                # happened: retry. Repeated failures need a fresh world (the caller's business).
                self._log(f"reset: {fault}; retrying")
                if attempt == 2:
                    raise
        self.world.reset_scene(randomize=True, seed=seed)

    # ---- episodes ----------------------------------------------------------------------------

    def observe(self, state: ArmState, now: float) -> Observation:
        """The observation of this tick: fresh renders of every view and the measured proprio."""
        views = {name: self.world.render(name) for name in self.views}
        return Observation(views, proprio_vector(state.ee_pose, state.gripper_closure), self.prompt, now)

    def run_episode(self, policy: Policy, seed: int | None = None) -> Episode:
        """Reset, then run ``policy`` once per tick until success or ``max_steps``."""
        self.reset(seed)
        cfg = self.config
        rate = self._rate()
        frames: list[npt.NDArray[np.uint8]] = []
        proprio: list[Float32Array] = []
        actions: list[Float32Array] = []
        success: list[bool] = []
        pending: DeltaCommand | None = None
        streak = 0
        fault = ""
        for _ in range(cfg.max_steps):
            now = rate.wait()
            try:
                state = self._tick(pending)
            except ArmFault as error:
                # A robot error mid-episode (franky-sim's arm goes limp until recovered): the rest
                # of the episode would not show what the policy does.
                fault = str(error)
                self._log(f"episode cut short: {fault}")
                break
            observation = self.observe(state, now)
            action = np.asarray(policy(observation), dtype=np.float32).reshape(-1)
            if action.shape != (ACTION_DIM,):
                raise ValueError(f"the policy answered {action.shape[0]} values, expected {ACTION_DIM}")
            lifted = self.world.privileged_success()
            frames.append(observation.stacked_views(self.views))
            proprio.append(observation.proprio)
            actions.append(action)
            success.append(lifted)
            pending = _command(action)
            streak = streak + 1 if lifted else 0
            if streak >= cfg.success_ticks:
                break
        if not frames:
            raise ArmFault(f"the episode ended before its first tick: {fault}", connection_lost=False)
        return Episode(
            views=np.stack(frames),
            proprio=np.stack(proprio),
            actions=np.stack(actions),
            success=np.array(success, dtype=bool),
            view_names=self.views,
            seed=-1 if seed is None else seed,
            succeeded=streak >= cfg.success_ticks,
            fault=fault,
        )


def _command(action: Float32Array) -> DeltaCommand:
    values = np.asarray(action, dtype=np.float64)
    return DeltaCommand(values[:3].copy(), values[3:6].copy(), float(values[6]))
