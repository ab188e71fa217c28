"""The YAM GPU-insertion loop, unattended, in the simulated world on simulated time, without ROS.

The same pieces as the robot's graph, wired in one process: the profile's
:class:`~pld_ros.core.episode.EpisodeSupervisor` (one episode per stage attempt, the stage machine
with its recovery routes), the arm's :class:`~pld_ros.core.safety.SafetyFilter` and the real
:class:`~pld_ros.drivers.i2rt_arm.I2rtArmBackend` on the i2rt driver's kinematic ``SimRobot``, and
the :class:`~pld_ros.sim.yam_gpu_insertion.YamGpuInsertionWorld`. Two stand-ins, for what cannot
run here: the base VLA is the privileged scripted expert (told the stage by its prompt, as the
multi-task policy is), and the success classifier is the world's privileged stage signals, one per
head. Every tick is 1 / control_rate s of simulated time, so 30 minutes of operation compute in
a few minutes.

Failures are injected as the issue asks:

- *drop*: while the card is held, it falls from the fingers (each tick with ``drop_rate``); a drop
  detector (the card leaves the closed fingers) fails the stage, which routes to ``recover``;
- *stall*: a stage attempt in which the policy does nothing (each attempt with ``stall_rate``), so
  the stage times out and routes to ``recover``;
- *knock*: the card is knocked over (at the given times); lying on its side it cannot be picked,
  the recovery times out, the loop aborts and the full reset stands for a human's help.

Each ended stage attempt is appended to ``<run_dir>/episodes.jsonl`` as the supervisor node does,
so ``pld runs loop RUN_DIR`` summarizes and plots it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pld_ros.core.arm_controller import ArmMode
from pld_ros.core.episode import (
    EpisodeSettings,
    EpisodeSupervisor,
    EventKind,
    Phase,
    RunRequest,
    SeenCommand,
    Source,
    TickInput,
)
from pld_ros.core.episode_log import EpisodeLog, EpisodeRecord
from pld_ros.core.safety import DeltaCommand, SafetyFilter
from pld_ros.drivers.i2rt_arm import I2rtArmBackend
from pld_ros.profile import I2rtArm, Profile
from pld_ros.sim.yam_gpu_insertion import READY_JOINTS, STAGES, YamGpuInsertionWorld
from pld_ros.sim.yam_gpu_insertion_expert import YamGpuInsertionExpert
from pld_ros.sim.yam_gpu_insertion_session import PartDropDetector, expert_stage

T0 = 1.7e9
"""Unix time the simulated clock starts at, for the episode log's wall-clock stamps."""


@dataclass(frozen=True)
class LoopFaults:
    """Failure injection rates (see the module docstring)."""

    drop_rate: float = 0.0
    """Chance per tick, while the card is held, that it falls from the fingers."""
    stall_rate: float = 0.0
    """Chance per stage attempt that the policy does nothing until the stage times out."""
    knock_times: tuple[float, ...] = ()
    """Simulated seconds at which the card is knocked over (a failure the loop cannot recover from
    by itself)."""


@dataclass
class LoopReport:
    records: list[EpisodeRecord]
    injected: dict[str, int] = field(default_factory=lambda: {"drop": 0, "stall": 0, "knock": 0})
    ticks: int = 0
    compute_s: float = 0.0
    """Wall time the simulated operation took to compute, s."""


def run_yam_loop(
    profile: Profile,
    minutes: float,
    run_dir: Path,
    faults: LoopFaults = LoopFaults(),
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> LoopReport:
    """Run the loop for ``minutes`` of simulated operation; returns its records (also logged)."""
    if profile.simulation is None or profile.simulation.world != "yam_gpu_insertion":
        raise ValueError(f"profile {profile.name!r} is not a simulated yam_gpu_insertion profile")
    config = profile.arms[profile.control_arm]
    if not isinstance(config, I2rtArm):
        raise ValueError(f"arm {profile.control_arm!r} is not an i2rt arm")
    settings = EpisodeSettings.from_profile(profile)
    if not settings.stage_episodes:
        raise ValueError(f"profile {profile.name!r}: the loop needs supervisor.episode_scope 'stage'")
    stages = {stage.name: stage for stage in settings.stages}
    behaviours = {name: expert_stage(stage) for name, stage in stages.items()}
    rng = np.random.default_rng(seed)
    dt = 1.0 / profile.supervisor.control_rate
    arm = I2rtArmBackend(config, sim=True, joint_speed=4.0)
    arm.connect()
    world = YamGpuInsertionWorld(arm.model_path, seed=seed)
    expert = YamGpuInsertionExpert(world)
    safety = SafetyFilter(config.safety)
    supervisor = EpisodeSupervisor(settings)
    log = EpisodeLog(run_dir)
    report = LoopReport(records=[])
    detector = PartDropDetector()
    started = time.perf_counter()
    try:
        arm.move_joints(READY_JOINTS)
        world.reset_scene(seed=seed)
        state = arm.read_state()
        safety.reset(state.ee_pose, state.gripper_closure)
        supervisor.start(RunRequest())
        stalled = False
        failure = ""
        step = 0
        ticks = round(minutes * 60.0 / dt)
        knock_ticks = {round(at / dt) for at in faults.knock_times}
        for tick in range(ticks):
            now = tick * dt
            state = arm.read_state()
            world.update(state.joint_positions, state.gripper_closure)
            running = supervisor.phase in (Phase.PROBING, Phase.TAKEOVER)
            signals = world.signals()
            out = supervisor.tick(
                TickInput(
                    now=now,
                    wall_time=T0 + now,
                    arm_mode=ArmMode.MOVING,
                    pose=state.ee_pose,
                    target=safety.target,
                    gripper_closure=state.gripper_closure,
                    command=SeenCommand(Source.BASE, step) if running else None,
                    scores=tuple(float(signals.of(name)) for name in STAGES),
                    base_fresh_at=now,
                    failure=failure,
                )
            )
            failure = ""
            step = out.status.step
            for record in out.records:
                log.append(record)
                report.records.append(record)
                if progress is not None:
                    progress(
                        f"{record.stage:<14} {record.outcome:<8} {record.duration_s:6.1f} s {record.reason}"
                    )
            if any(event.kind is EventKind.STARTED for event in out.events):
                stalled = bool(rng.random() < faults.stall_rate)
                report.injected["stall"] += stalled
            if out.reset_scene:
                world.reset_scene()
            if out.command is not None:
                command = DeltaCommand(out.command.translation, out.command.rotation, out.command.gripper)
            elif out.status.phase in (Phase.PROBING, Phase.TAKEOVER) and not stalled:
                command = expert.act(behaviours[out.status.stage_name], state.ee_pose, state.gripper_closure)
            else:
                command = None
            output = safety.step(command, state.ee_pose)
            arm.command(output.target, output.gripper)
            if world.attached and rng.random() < faults.drop_rate:
                report.injected["drop"] += world.drop_part()
            if tick in knock_ticks:
                world.knock_part()
                report.injected["knock"] += 1
            failure = detector.update(world.attached, output.gripper)
        report.ticks = ticks
    finally:
        report.compute_s = time.perf_counter() - started
        world.close()
        arm.close()
    return report
