"""The episode supervisor's logic against a kinematic arm, with the test playing the policy side.

The arm is the real safety filter integrating the supervisor's reset deltas, with a measured pose
that follows its target with a lag; the policy side (base policy, residual, reward) is the test
deciding each tick whether a command, scores and a fresh base action arrived.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from pld_ros.core.arm_controller import ArmMode
from pld_ros.core.episode import (
    EpisodeSettings,
    EpisodeSupervisor,
    Event,
    EventKind,
    Outcome,
    Phase,
    RunMode,
    RunRequest,
    SeenCommand,
    Source,
    TickInput,
    TickOutput,
)
from pld_ros.core.episode_log import EpisodeRecord
from pld_ros.core.safety import DeltaCommand, SafetyFilter
from pld_ros.core.spatial import Pose, rotation_angle_between
from pld_ros.profile import SafetyLimits, Stage, load_profile
from tests.conftest import CONFIG_DIR

DT = 0.05
LIMITS = SafetyLimits(workspace_min=(0.25, -0.35, 0.02), workspace_max=(0.75, 0.35, 0.55))
HOME = (0.5, 0.0, 0.4)
DOWN = (1.0, 0.0, 0.0, 0.0)


def settings(**overrides: Any) -> EpisodeSettings:
    base = EpisodeSettings(
        stages=(Stage(name="lift", threshold=0.9, debounce_frames=3),),
        workspace_min=LIMITS.workspace_min,
        workspace_max=LIMITS.workspace_max,
        max_translation_step=LIMITS.max_translation_step,
        max_rotation_step=LIMITS.max_rotation_step,
        max_episode_steps=20,
        mode=RunMode.PROBE_TAKEOVER,
        warmup_episodes=0,
        max_probe_steps=5,
        home_position=HOME,
        home_orientation=DOWN,
        home_randomization=0.03,
        settle_time=0.1,
        reset_timeout=5.0,
        base_timeout=0.5,
        max_missing_ticks=3,
        seed=7,
    )
    return replace(base, **overrides)


class Harness:
    """Ticks the supervisor against a kinematic arm; attributes say what the policy side does."""

    def __init__(self, settings: EpisodeSettings, start: Pose | None = None) -> None:
        self.supervisor = EpisodeSupervisor(settings)
        self.filter = SafetyFilter(LIMITS)
        self.pose = start or Pose.of((0.4, 0.1, 0.3), DOWN)
        self.gripper = 0.8
        self.filter.reset(self.pose, self.gripper)
        self.mode = ArmMode.IDLE
        self.arm_error = ""
        self.now = 0.0
        # The policy side: commands, scores and base actions arrive each tick unless switched off.
        self.commands = True
        self.source = Source.BASE
        self.scores = True
        self.base_fresh = True
        self.base_fresh_at: float | None = None
        self.success = 0.0
        self.heads: tuple[float, ...] | None = None
        """Scores of several heads; None: ``success`` on the one head."""
        self.failure = ""
        """A failure detector's report for the next tick only."""
        self.stale_cameras: tuple[str, ...] = ()
        self.outputs: list[TickOutput] = []
        self.events: list[Event] = []
        self.records: list[EpisodeRecord] = []
        self.scene_resets = 0
        self.homing_ticks = 0
        """Ticks a joint homing call stays in flight."""
        self._homing_left = 0

    def tick(self) -> TickOutput:
        phase = self.supervisor.phase
        episode_running = phase in (Phase.PROBING, Phase.TAKEOVER)
        if self.base_fresh:
            self.base_fresh_at = self.now
        status = self.outputs[-1].status if self.outputs else None
        command = (
            SeenCommand(self.source, status.step if status else 0)
            if episode_running and self.commands
            else None
        )
        out = self.supervisor.tick(
            TickInput(
                now=self.now,
                wall_time=1.7e9 + self.now,
                arm_mode=self.mode,
                pose=self.pose,
                target=self.filter.target,
                gripper_closure=self.gripper,
                arm_error=self.arm_error,
                command=command,
                scores=(self.heads or (self.success,)) if self.scores else None,
                base_fresh_at=self.base_fresh_at,
                stale_cameras=self.stale_cameras,
                failure=self.failure,
                homing_busy=self._homing_left > 0,
            )
        )
        self.failure = ""
        self._homing_left = self.homing_ticks if out.home_arm else max(0, self._homing_left - 1)
        self._move(out)
        self.outputs.append(out)
        self.events.extend(out.events)
        self.records.extend(out.records)
        self.scene_resets += out.reset_scene
        self.now += DT
        return out

    def _move(self, out: TickOutput) -> None:
        if self.mode not in (ArmMode.IDLE, ArmMode.MOVING, ArmMode.HOLDING):
            return
        if out.command is not None:
            if self.mode is not ArmMode.MOVING:
                self.filter.reset(self.pose, self.gripper)
            c = out.command
            self.filter.step(DeltaCommand(c.translation, c.rotation, c.gripper), self.pose)
            self.mode = ArmMode.MOVING
        target = self.filter.target
        assert target is not None
        # A first-order lag: the measured pose covers half the remaining distance each tick.
        self.pose = Pose.of(
            self.pose.position + 0.5 * (target.position - self.pose.position), target.orientation
        )
        self.gripper += float(np.clip(self.filter.gripper_target - self.gripper, -0.2, 0.2))

    def run_until(self, done: Any, ticks: int = 2000) -> TickOutput:
        for _ in range(ticks):
            out = self.tick()
            if done(out):
                return out
        raise AssertionError(f"not reached in {ticks} ticks; last status {self.outputs[-1].status}")

    def until_phase(self, phase: Phase, ticks: int = 2000) -> TickOutput:
        return self.run_until(lambda out: out.status.phase is phase, ticks)

    def until_ended(self, ticks: int = 2000) -> Event:
        out = self.run_until(lambda out: any(e.kind is EventKind.ENDED for e in out.events), ticks)
        return next(e for e in out.events if e.kind is EventKind.ENDED)


def started(harness: Harness) -> list[Event]:
    return [e for e in harness.events if e.kind is EventKind.STARTED]


def test_reset_commands_are_clipped_open_the_gripper_and_converge_home() -> None:
    harness = Harness(settings(), start=Pose.of((0.3, 0.25, 0.15), (0.9239, 0.0, 0.0, 0.3827)))
    harness.supervisor.start()
    out = harness.until_phase(Phase.PROBING)
    commands = [o.command for o in harness.outputs if o.command is not None]
    assert len(commands) > 10
    for command in commands:
        assert np.linalg.norm(command.translation) <= LIMITS.max_translation_step + 1e-12
        assert np.linalg.norm(command.rotation) <= LIMITS.max_rotation_step + 1e-12
        assert command.gripper == 0.0 and command.episode_id == 1
    assert harness.scene_resets == 1
    # Started at the randomized home, within reach tolerance, gripper open, inside r of home.
    assert np.all(np.abs(harness.pose.position - np.asarray(HOME)) <= 0.03 + 0.005)
    assert rotation_angle_between(harness.pose.orientation, np.asarray(DOWN)) < 0.05
    assert harness.gripper <= 0.1
    assert not np.any(out.command.translation if out.command else 0.0), "at the start: a hold at most"
    assert all(harness.tick().command is None for _ in range(5)), "no reset command during the episode"
    phases = [e.phase for e in harness.events]
    assert phases == [Phase.RESETTING, Phase.PROBING]
    event = started(harness)[0]
    assert event.episode_id == 1 and event.mode is RunMode.PROBE_TAKEOVER and 0 <= event.probe_steps <= 5


def test_a_reset_with_joint_homing_sends_no_cartesian_command_until_the_arm_is_homed() -> None:
    harness = Harness(settings(home_joints=True), start=Pose.of((0.3, 0.25, 0.15), DOWN))
    harness.homing_ticks = 10
    harness.supervisor.start()
    harness.until_phase(Phase.PROBING)
    [homing] = [i for i, o in enumerate(harness.outputs) if o.home_arm]
    first_command = next(i for i, o in enumerate(harness.outputs) if o.command is not None)
    assert first_command > homing + 10, "no Cartesian target while the joint move runs"
    assert harness.scene_resets == 1
    # Every reset homes again.
    harness.until_ended()
    harness.until_phase(Phase.PROBING)
    assert sum(o.home_arm for o in harness.outputs) == 2
    # Without the setting, no homing.
    plain = Harness(settings())
    plain.supervisor.start()
    plain.until_phase(Phase.PROBING)
    assert not any(o.home_arm for o in plain.outputs)


def test_a_homing_that_never_ends_times_the_reset_out_with_the_reason() -> None:
    harness = Harness(settings(home_joints=True, homing_timeout=1.0))
    harness.homing_ticks = 10_000
    harness.supervisor.start()
    ended = harness.until_ended(ticks=40)
    assert (ended.outcome, ended.reason) == (Outcome.ABORTED, "joint homing took longer than 1.0 s")
    assert not any(o.command for o in harness.outputs)


def test_the_reset_timeout_counts_from_the_end_of_a_long_homing() -> None:
    # A 1.5 s homing, then a reset to a home 5 cm away at 2 cm a tick: within a 1 s reset timeout
    # only when counted from the homing's end.
    near = Pose.of((0.5, 0.05, 0.4), DOWN)
    harness = Harness(settings(home_joints=True, reset_timeout=1.0, homing_timeout=2.0), start=near)
    harness.homing_ticks = 30
    harness.supervisor.start()
    harness.until_phase(Phase.PROBING)
    assert not [e for e in harness.events if e.kind is EventKind.ENDED]
    # Without the homing done in time, the reason says which bound it broke.
    late = Harness(settings(home_joints=True, reset_timeout=0.1, homing_timeout=2.0), start=near)
    late.homing_ticks = 5
    late.supervisor.start()
    ended = late.until_ended(ticks=40)
    assert ended.outcome is Outcome.ABORTED
    assert ended.reason.startswith("reset took longer than 0.1 s after the joint homing (")


def test_home_offsets_are_uniform_within_r_and_clipped_inside_the_workspace() -> None:
    # Home 1 cm below the top of the box with r = 5 cm: offsets above the box are clipped to it.
    home = (0.5, 0.0, 0.54)
    harness = Harness(settings(home_position=home, home_randomization=0.05, max_episode_steps=1))
    harness.supervisor.start()
    goals = []
    for _ in range(30):
        harness.until_phase(Phase.PROBING)
        goals.append(harness.supervisor._episode.goal.position.copy())  # type: ignore[union-attr]
        harness.until_ended()
    goals_array = np.array(goals)
    assert np.all(goals_array <= np.asarray(LIMITS.workspace_max) + 1e-12)
    assert np.all(np.abs(goals_array[:, :2] - np.asarray(home[:2])) <= 0.05)
    assert np.any(goals_array[:, 2] == LIMITS.workspace_max[2]), "some offsets reach the clip"
    assert goals_array[:, 0].std() > 0.015, "offsets are spread, not constant"


def test_warmup_episodes_run_the_base_alone_and_probe_lengths_stay_within_bounds() -> None:
    harness = Harness(
        settings(warmup_episodes=3, max_probe_steps=4, max_episode_steps=2, home_randomization=0.0)
    )
    harness.supervisor.start()
    # An aborted episode during the warm-up does not count toward it.
    harness.until_phase(Phase.PROBING)
    harness.stale_cameras = ("wrist",)
    assert harness.until_ended().outcome is Outcome.ABORTED
    harness.stale_cameras = ()
    for _ in range(80):
        harness.until_ended()
    events = started(harness)
    modes = [e.mode for e in events]
    assert modes[:4] == [RunMode.BASE_ONLY] * 4 and set(modes[4:]) == {RunMode.PROBE_TAKEOVER}
    assert all(e.probe_steps == 2 for e in events[:4]), "base-only: the base acts for every step"
    ks = Counter(e.probe_steps for e in events[4:])
    assert set(ks) == {0, 1, 2, 3, 4}, f"k ~ U[0, 4] covers both ends: {ks}"


def test_the_same_seed_draws_the_same_episodes() -> None:
    def draws() -> list[tuple[int, tuple[float, ...]]]:
        harness = Harness(settings(max_episode_steps=1))
        harness.supervisor.start()
        result = []
        for _ in range(5):
            harness.until_phase(Phase.PROBING)
            goal = harness.supervisor._episode.goal.position  # type: ignore[union-attr]
            result.append((started(harness)[-1].probe_steps, tuple(goal)))
            harness.until_ended()
        return result

    assert draws() == draws()


def test_success_after_the_debounce_and_takeover_on_the_first_combined_command() -> None:
    harness = Harness(settings(max_episode_steps=100))
    harness.supervisor.start()
    harness.until_phase(Phase.PROBING)
    for _ in range(3):
        harness.tick()
    harness.source = Source.COMBINED
    out = harness.tick()
    assert out.status.phase is Phase.TAKEOVER
    change = out.events[0]
    assert change.kind is EventKind.PHASE_CHANGED and change.phase is Phase.TAKEOVER
    harness.success = 0.95
    harness.tick(), harness.tick()
    ended = harness.until_ended(ticks=1)
    assert ended.outcome is Outcome.SUCCESS and ended.reason.startswith("success: lift succeeded")
    record = harness.records[-1]
    assert (record.outcome, record.episode_id, record.steps, record.mode) == (
        "success",
        1,
        7,
        "probe_takeover",
    )
    assert record.duration_s == pytest.approx(7 * DT) and record.stage == "lift" and record.cycles == 1
    assert harness.outputs[-1].status.phase is Phase.DONE and harness.outputs[-1].status.successes == 1
    # The next reset starts by itself at the next tick.
    harness.success = 0.0
    assert harness.tick().status.phase is Phase.RESETTING


def test_the_step_limit_is_a_failure_and_human_steps_are_counted() -> None:
    harness = Harness(settings(max_episode_steps=20))
    harness.supervisor.start()
    harness.until_phase(Phase.PROBING)
    harness.source = Source.HUMAN
    ended = harness.until_ended()
    assert ended.outcome is Outcome.FAILURE and ended.reason == "step limit (20 steps)" and ended.step == 20
    assert harness.records[-1].human_steps == 20


def arm_error(harness: Harness) -> None:
    harness.mode, harness.arm_error = ArmMode.ERROR, "reflex"


def stale_camera(harness: Harness) -> None:
    harness.stale_cameras = ("wrist",)


def dead_base_policy(harness: Harness) -> None:
    harness.base_fresh = False


def silent_residual(harness: Harness) -> None:
    harness.commands = False


def silent_reward(harness: Harness) -> None:
    harness.scores = False


# How each fault is injected, the reason it ends the episode with, and the ticks between the
# injection and the start of a success that is confirmed (3 frames) at the tick the fault fires.
FAULTS: dict[str, tuple[Callable[[Harness], None], str, int]] = {
    "arm error": (arm_error, "arm error: reflex", 0),
    "camera": (stale_camera, "camera wrist stale", 0),
    "dead VLA": (dead_base_policy, "base policy stale for 0.5 s", 8),
    "no command": (silent_residual, "no command for 4 ticks", 2),
    "no scores": (silent_reward, "no success scores for 4 ticks", 1),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_fault_aborts_the_episode_even_at_a_success_and_the_run_goes_on_once_it_clears(fault: str) -> None:
    inject, reason, delay = FAULTS[fault]
    harness = Harness(settings())
    harness.supervisor.start()
    harness.until_phase(Phase.PROBING)
    harness.tick()
    inject(harness)
    for _ in range(delay):
        assert not harness.tick().events
    # The success signal is confirmed at the very tick the fault is seen: the fault wins.
    harness.success = 0.95
    ended = harness.until_ended(ticks=3)
    assert (ended.outcome, ended.reason) == (Outcome.ABORTED, reason)
    assert harness.records[-1].outcome == "aborted"
    assert not any(e.outcome in (Outcome.SUCCESS, Outcome.FAILURE) for e in harness.events)
    # Arm and cameras are waited for; policy-side silence is only judged within an episode.
    if fault in ("arm error", "camera"):
        for _ in range(20):
            assert harness.tick().status.phase is Phase.IDLE
        assert any(m == f"waiting: {reason}" for o in harness.outputs for m in o.messages)
    harness.mode, harness.arm_error, harness.stale_cameras = ArmMode.HOLDING, "", ()
    harness.commands = harness.scores = harness.base_fresh = True
    harness.success = 0.0
    harness.until_phase(Phase.PROBING)
    assert started(harness)[-1].episode_id == 2


def test_a_reset_that_takes_too_long_is_aborted_and_retried() -> None:
    harness = Harness(settings(reset_timeout=1.0))
    harness.supervisor.start()
    harness.tick()
    harness.mode = ArmMode.MOVING
    # A blocked arm: it never moves.
    harness._move = lambda out: None  # type: ignore[method-assign]
    ended = harness.until_ended(ticks=40)
    assert ended.outcome is Outcome.ABORTED and ended.reason.startswith("reset took longer than 1.0 s (")
    assert "scene reset not called" in ended.reason
    record = harness.records[-1]
    assert (record.steps, record.duration_s, record.outcome) == (0, 0.0, "aborted")
    out = harness.tick()
    assert out.status.phase is Phase.RESETTING and out.status.episode_id == 2


def test_resets_that_keep_failing_stop_the_run_with_the_reason() -> None:
    harness = Harness(settings(reset_timeout=1.0, max_reset_failures=2))
    harness.supervisor.start()
    harness.tick()
    harness.mode = ArmMode.MOVING
    harness._move = lambda out: None  # type: ignore[method-assign]
    out = harness.run_until(lambda out: out.run_result is not None)
    assert out.run_result is not None
    assert out.run_result.reason.startswith("2 resets in a row failed, the last: reset took longer")
    assert [r.outcome for r in harness.records] == ["aborted", "aborted"]
    assert not harness.supervisor.running


def test_pause_waits_for_the_episode_to_end_and_resume_goes_on() -> None:
    harness = Harness(settings(max_episode_steps=10))
    harness.supervisor.start()
    harness.until_phase(Phase.PROBING)
    harness.supervisor.pause()
    ended = harness.until_ended()
    assert ended.outcome is Outcome.FAILURE, "a pause does not cut the episode short"
    for _ in range(20):
        out = harness.tick()
        assert out.status.phase is Phase.IDLE and out.status.paused and out.command is None
    harness.supervisor.resume()
    assert harness.tick().status.phase is Phase.RESETTING


def test_stop_and_estop_abort_the_running_episode() -> None:
    harness = Harness(settings())
    harness.supervisor.start()
    harness.until_phase(Phase.PROBING)
    harness.supervisor.estop(True, "operator")
    ended = harness.until_ended(ticks=1)
    assert (ended.outcome, ended.reason) == (Outcome.ABORTED, "e-stop: operator")
    for _ in range(5):
        assert harness.tick().status.estopped
    harness.supervisor.estop(False)
    harness.until_phase(Phase.PROBING)
    harness.supervisor.stop()
    ended = harness.until_ended(ticks=1)
    assert (ended.outcome, ended.reason) == (Outcome.ABORTED, "stopped by operator")
    result = harness.tick().run_result
    assert result is not None and result.reason == "stopped by operator"
    assert (result.episodes, result.aborted, result.successes) == (2, 2, 0)
    assert not harness.supervisor.running
    for _ in range(10):
        assert harness.tick().status.phase is Phase.IDLE


def test_a_run_ends_after_its_count_of_episodes_or_successes() -> None:
    harness = Harness(settings(episodes=3, max_episode_steps=3))
    harness.supervisor.start()
    out = harness.run_until(lambda out: out.run_result is not None)
    assert out.run_result is not None and out.run_result.reason == "episode count reached"
    assert (out.run_result.episodes, out.run_result.failures) == (3, 3)
    harness.supervisor.start(RunRequest(successes=2))
    with pytest.raises(RuntimeError, match="already in progress"):
        harness.supervisor.start(RunRequest(successes=2))
    harness.success = 0.95
    out = harness.run_until(lambda out: out.run_result is not None)
    assert out.run_result is not None and out.run_result.reason == "success count reached"
    assert out.run_result.successes == 2 and out.status.episodes_completed == 2


def test_aborted_episodes_do_not_count_towards_the_run() -> None:
    harness = Harness(settings(episodes=2, max_episode_steps=10))
    harness.supervisor.start()
    harness.until_phase(Phase.PROBING)
    harness.commands = False
    assert harness.until_ended().outcome is Outcome.ABORTED
    harness.commands = True
    out = harness.run_until(lambda out: out.run_result is not None)
    assert out.run_result is not None
    assert (out.run_result.episodes, out.run_result.aborted, out.run_result.failures) == (3, 1, 2)


def test_settings_from_the_shipped_profile() -> None:
    profile = load_profile(CONFIG_DIR / "franka_pick_cube_sim.yaml")
    loaded = EpisodeSettings.from_profile(profile, episodes=5)
    assert loaded.episodes == 5 and loaded.mode is RunMode.PROBE_TAKEOVER
    assert loaded.stages[0].name == "lift" and loaded.max_probe_steps == 40
    assert loaded.workspace_max == (0.75, 0.35, 0.55) and loaded.base_timeout == 2.0
    assert loaded.home_joints == profile.supervisor.home_joints_on_reset
    homing = profile.model_copy(
        update={"supervisor": profile.supervisor.model_copy(update={"home_joints_on_reset": True})}
    )
    assert EpisodeSettings.from_profile(homing).home_joints
    assert EpisodeSettings.from_profile(profile).episodes == profile.supervisor.episodes
    collecting = profile.model_copy(
        update={"supervisor": profile.supervisor.model_copy(update={"successes": 200})}
    )
    assert EpisodeSettings.from_profile(collecting).successes == 200


def test_closing_aborts_the_running_episode_and_ids_start_where_asked() -> None:
    harness = Harness(settings())
    harness.supervisor = EpisodeSupervisor(settings(), first_episode_id=42)
    assert harness.supervisor.close("shut down", 0.0, 0.0) == ((), ()), "nothing runs yet"
    harness.supervisor.start()
    harness.until_phase(Phase.PROBING)
    harness.tick()
    events, records = harness.supervisor.close("supervisor shut down", harness.now, 1.7e9)
    assert [(e.kind, e.outcome, e.episode_id) for e in events] == [(EventKind.ENDED, Outcome.ABORTED, 42)]
    assert [(r.outcome, r.reason, r.steps) for r in records] == [("aborted", "supervisor shut down", 1)]
    with pytest.raises(ValueError, match="start at 1"):
        EpisodeSupervisor(settings(), first_episode_id=0)


def test_scores_that_do_not_fit_the_stages_abort_the_episode() -> None:
    harness = Harness(settings(stages=(Stage(name="lift", head=2),)))
    harness.supervisor.start()
    harness.until_phase(Phase.PROBING)
    ended = harness.until_ended(ticks=1)
    assert ended.outcome is Outcome.ABORTED
    assert ended.reason == "bad success scores: stage 'lift' reads head 2, but the scores have 1 value(s)"


# -- one episode per stage (a long-horizon loop) ---------------------------------------------------

LOOP = (
    Stage(name="insert", head=0, threshold=0.5, timeout=1.0, on_success="press", on_failure="recover"),
    Stage(name="press", head=1, threshold=0.5, timeout=1.0, on_success="insert", on_failure="recover"),
    Stage(name="recover", head=2, threshold=0.5, timeout=1.0, on_success="insert", on_failure="abort"),
)
HEADS = {"insert": (1.0, 0.0, 0.0), "press": (0.0, 1.0, 0.0), "recover": (0.0, 0.0, 1.0)}


def loop_harness(**overrides: Any) -> Harness:
    harness = Harness(
        settings(**{"stages": LOOP, "stage_episodes": True, "max_episode_steps": 100, **overrides})
    )
    harness.heads = (0.0, 0.0, 0.0)
    harness.supervisor.start()
    harness.until_phase(Phase.PROBING)
    return harness


def succeed(harness: Harness, stage: str) -> Event:
    assert harness.outputs[-1].status.stage_name == stage
    harness.heads = HEADS[stage]
    ended = harness.until_ended(ticks=5)
    harness.heads = (0.0, 0.0, 0.0)
    return ended


def test_stage_episodes_go_on_where_the_last_one_ended_without_a_reset() -> None:
    harness = loop_harness()
    assert succeed(harness, "insert").outcome is Outcome.SUCCESS
    out = harness.tick()
    assert out.command is None and out.status.phase is Phase.PROBING, "no reset between stages"
    assert [e.kind for e in out.events] == [EventKind.STARTED] and out.status.stage_name == "press"
    assert succeed(harness, "press").outcome is Outcome.SUCCESS
    harness.tick()
    assert harness.outputs[-1].status.stage_name == "insert"
    insert, press = harness.records
    assert (insert.stage, insert.continued, insert.cycles) == ("insert", False, 0)
    assert (press.stage, press.continued, press.cycles) == ("press", True, 1), "press closes the cycle"
    assert harness.scene_resets == 1
    assert all(not r.recovering for r in harness.records)


def test_a_failure_detector_routes_the_stage_to_its_recovery_and_back() -> None:
    harness = loop_harness()
    succeed(harness, "insert")
    harness.tick()
    harness.failure = "part dropped"
    ended = harness.until_ended(ticks=1)
    assert ended.outcome is Outcome.FAILURE and ended.reason == "press failed: part dropped"
    harness.tick()
    assert harness.outputs[-1].status.stage_name == "recover"
    assert succeed(harness, "recover").outcome is Outcome.SUCCESS
    harness.tick()
    assert harness.outputs[-1].status.stage_name == "insert"
    recover = harness.records[-1]
    assert recover.stage == "recover" and recover.recovering and recover.continued
    assert harness.scene_resets == 1, "the loop recovered by itself"


def test_a_stage_timeout_and_the_step_limit_fail_the_stage_into_its_recovery() -> None:
    harness = loop_harness()
    ended = harness.until_ended(ticks=25)
    assert ended.outcome is Outcome.FAILURE and ended.reason.startswith("insert timed out after 1.0 s")
    harness.tick()
    assert harness.outputs[-1].status.stage_name == "recover"
    assert succeed(harness, "recover").outcome is Outcome.SUCCESS

    limited = loop_harness(max_episode_steps=5)
    ended = limited.until_ended(ticks=6)
    assert ended.outcome is Outcome.FAILURE and ended.reason == "insert failed: step limit (5 steps)"
    limited.tick()
    assert limited.outputs[-1].status.stage_name == "recover"


def test_a_failed_recovery_and_a_fault_bring_a_full_reset_and_the_first_stage() -> None:
    harness = loop_harness()
    harness.failure = "part dropped"
    harness.until_ended(ticks=1)
    harness.tick()
    ended = harness.until_ended(ticks=25)  # the recovery times out: "abort"
    assert ended.outcome is Outcome.FAILURE and ended.reason.startswith("recover timed out")
    assert harness.tick().status.phase is Phase.RESETTING
    harness.until_phase(Phase.PROBING)
    assert harness.scene_resets == 2 and harness.outputs[-1].status.stage_name == "insert"

    succeed(harness, "insert")
    harness.tick()
    harness.stale_cameras = ("wrist",)
    assert harness.until_ended(ticks=1).outcome is Outcome.ABORTED
    harness.stale_cameras = ()
    harness.until_phase(Phase.PROBING)
    assert harness.scene_resets == 3 and harness.outputs[-1].status.stage_name == "insert"
    assert [r.continued for r in harness.records] == [False, True, False, True]


def test_only_the_trained_stages_use_the_residual_and_count_toward_the_warm_up() -> None:
    harness = loop_harness(train_stages=("press",), warmup_episodes=2)
    for _ in range(4):
        succeed(harness, "insert")
        harness.tick()
        succeed(harness, "press")
        harness.tick()
    modes = [(e.episode_id, e.mode) for e in started(harness)]
    by_stage = dict(
        zip([r.episode_id for r in harness.records], [r.stage for r in harness.records], strict=True)
    )
    press = [mode for episode, mode in modes if by_stage.get(episode) == "press"]
    insert = [mode for episode, mode in modes if by_stage.get(episode) == "insert"]
    assert press == [RunMode.BASE_ONLY] * 2 + [RunMode.PROBE_TAKEOVER] * 2, "two press warm-up episodes"
    assert set(insert) == {RunMode.BASE_ONLY}


def test_the_shipped_yam_profile_runs_stage_episodes_in_a_loop() -> None:
    profile = load_profile(CONFIG_DIR / "yam_gpu_insertion.yaml")
    loaded = EpisodeSettings.from_profile(profile)
    assert loaded.stage_episodes
    stages = {stage.name: stage for stage in loaded.stages}
    assert stages["unplug_return"].on_success == "insert_slot1", "the task loops"
    assert all(stage.on_failure == "recover" for name, stage in stages.items() if name != "recover")
    assert all(stage.prompt for stage in loaded.stages), "one multi-task policy: a prompt per stage"
