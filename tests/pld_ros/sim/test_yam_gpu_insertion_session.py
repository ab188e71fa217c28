"""The yam_gpu_insertion session: lost-part detection, fault injection, and the scripted expert as a
stand-in base policy, driven through the real I2rtArmBackend (on the i2rt SimRobot) and safety
filter, and served over a real websocket to the project's own openpi client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import pytest

from pld_ros.core.observation import ACTION_DIM, Observation, hold_action, proprio_vector
from pld_ros.core.safety import DeltaCommand, SafetyFilter
from pld_ros.core.spatial import Pose
from pld_ros.drivers.i2rt_arm import I2rtArmBackend
from pld_ros.policies.openpi_client import OpenpiPolicy, OpenpiServerError
from pld_ros.policies.openpi_server import OpenpiServer
from pld_ros.profile import BasePolicy, I2rtArm, OpenpiKeys, Profile, Stage, load_profile
from pld_ros.sim.yam_gpu_insertion import READY_JOINTS, STAGES, StageSignals, YamGpuInsertionWorld
from pld_ros.sim.yam_gpu_insertion_session import (
    PartDropDetector,
    UnknownPromptError,
    YamGpuInsertionSession,
    expert_stage,
    scores,
    stage_behaviours,
)
from tests.conftest import CONFIG_DIR

HORIZON = 10
KEYS = OpenpiKeys()


@dataclass
class Rig:
    profile: Profile
    config: I2rtArm
    arm: I2rtArmBackend
    session: YamGpuInsertionSession
    safety: SafetyFilter

    @property
    def world(self) -> YamGpuInsertionWorld:
        return self.session.world

    def prompt(self, stage: str) -> str:
        assert self.profile.reward is not None
        prompt = next(s.prompt for s in self.profile.reward.stages if s.name == stage)
        assert prompt is not None
        return prompt

    def request(self, prompt: str) -> dict[str, object]:
        """What the base policy node sends: the prompt and the measured proprioception."""
        state = self.arm.read_state()
        return {KEYS.prompt: prompt, KEYS.state: proprio_vector(state.ee_pose, state.gripper_closure)}

    def tick(self, row: np.ndarray) -> str | None:
        """Send one action row through the safety filter, then show the world the arm."""
        state = self.arm.read_state()
        command = DeltaCommand(row[:3].astype(np.float64), row[3:6].astype(np.float64), float(row[6]))
        output = self.safety.step(command, state.ee_pose)
        self.arm.command(output.target, output.gripper)
        state = self.arm.read_state()
        return self.session.update(state.joint_positions, state.gripper_closure)

    def run(self, stage: str, *, execute: int, max_ticks: int = 600) -> tuple[int, list[str]]:
        """Ask for a chunk every ``execute`` ticks and run that many of its rows until the stage's
        signal (its head's) holds: the ticks it took and the lost-part reports on the way."""
        prompt = self.prompt(stage)
        failures: list[str] = []
        for tick in range(max_ticks):
            if self.world.signals().of(self.session.behaviours[prompt]):
                return tick, failures
            if tick % execute == 0:
                chunk = self.session.answer(self.request(prompt), KEYS)[KEYS.actions]
            if (lost := self.tick(chunk[tick % execute])) is not None:
                failures.append(lost)
        pytest.fail(f"{stage} not done in {max_ticks} ticks: {self.world.signals()}")


def held(world: YamGpuInsertionWorld) -> bool:
    # A call, not the property, where the state changes between asserts: mypy narrows a property
    # across calls it does not know change it.
    return world.attached


@pytest.fixture
def rig() -> Iterator[Rig]:
    profile = load_profile("yam_gpu_insertion", sim=True, config_dir=CONFIG_DIR)
    config = profile.arms[profile.control_arm]
    assert isinstance(config, I2rtArm) and profile.reward is not None and profile.policies is not None
    arm = I2rtArmBackend(config, sim=True, joint_speed=4.0)
    arm.connect()
    arm.move_joints(READY_JOINTS)
    world = YamGpuInsertionWorld(arm.model_path)
    session = YamGpuInsertionSession(
        world, stage_behaviours(profile.reward.stages, profile.policies.base.prompt), horizon=HORIZON
    )
    state = arm.read_state()
    session.update(state.joint_positions, state.gripper_closure)
    safety = SafetyFilter(config.safety)
    safety.reset(state.ee_pose, state.gripper_closure)
    try:
        yield Rig(profile, config, arm, session, safety)
    finally:
        world.close()
        arm.close()


def test_each_stage_answers_to_its_prompt_or_name_with_the_behaviour_of_its_head() -> None:
    stages = (
        Stage(name="insert_slot1", head=0, prompt="insert it"),
        Stage(name="move_to_slot3", head=1),
        Stage(name="unplug_return", head=3, prompt="put it back"),
        Stage(name="recover", head=3, prompt="recover it"),
    )
    assert stage_behaviours(stages, "do the task") == {
        "insert it": "insert_slot1",
        "do the task": "move_to_slot3",
        "put it back": "unplug_return",
        "recover it": "unplug_return",
    }
    with pytest.raises(
        ValueError, match=r"reward.stages\[1\]: stage 'recover': head 4 .*\(heads 0-3: insert"
    ):
        stage_behaviours((stages[0], Stage(name="recover", head=4)), "do the task")
    with pytest.raises(ValueError, match=r"reward.stages\[1\] \(b\): prompt 'same' is also stage 'a'"):
        stage_behaviours((Stage(name="a", head=0, prompt="same"), Stage(name="b", head=1)), "same")
    assert scores(StageSignals(False, True, False, True)) == [0.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("execute", [1, 5])
def test_the_stand_in_policy_runs_a_full_cycle_from_its_chunks(rig: Rig, execute: int) -> None:
    """Chunks run k of H open-loop, as the base policy node runs them; releasing the card at home
    is no lost part."""
    ticks = {}
    for stage in STAGES:
        ticks[stage], failures = rig.run(stage, execute=execute)
        assert failures == [], stage
    print(f"cycle with {execute} of {HORIZON} rows per chunk: {ticks}")
    assert rig.world.signals() == StageSignals(False, False, False, True)
    assert sum(rig.safety.counters.values()) == 0, rig.safety.counters
    # recover runs unplug_return's behaviour: from slot 3 back home.
    rig.world.insert(3)
    ticks["recover"], _ = rig.run("recover", execute=execute)
    assert rig.world.signals().home


def test_later_rows_replay_the_expert_until_the_world_would_change_under_them(rig: Rig) -> None:
    # The sim arm starts with its fingers closed: the first row opens them, nothing more is known.
    chunk = rig.session.answer(rig.request(rig.prompt("insert_slot1")), KEYS)[KEYS.actions]
    assert chunk.shape == (HORIZON, ACTION_DIM) and chunk.dtype == np.float32
    assert chunk[0, 6] == 0.0 and np.linalg.norm(chunk[0, :3]) > 0.005
    assert not np.any(chunk[1:, :6]) and np.all(chunk[1:, 6] == 0.0)
    # Far from the card, fingers open: every row moves on from where the previous one left the TCP
    # (the replayed expert: the same rows as asking it at each predicted pose).
    rig.tick(hold_action(0.0))
    state = rig.arm.read_state()
    chunk = rig.session.chunk(rig.prompt("insert_slot1"), state.ee_pose, state.gripper_closure)
    assert np.all(np.linalg.norm(chunk[:, :3], axis=1) > 0.005) and np.all(chunk[:, 6] == 0.0)
    pose = state.ee_pose
    for row in chunk:
        step = rig.session.expert.act("insert_slot1", pose, 0.0)
        np.testing.assert_allclose(row[:6], [*step.translation, *step.rotation], atol=1e-6)
        pose = pose.moved(row[:3].astype(np.float64), row[3:6].astype(np.float64))
    # Holding the card: only the first row moves; the rest hold, gripper closed.
    rig.run("insert_slot1", execute=1)
    assert rig.world.attached
    state = rig.arm.read_state()
    held = rig.session.chunk(rig.prompt("move_to_slot3"), state.ee_pose, state.gripper_closure)
    assert np.linalg.norm(held[0, :3]) > 0.005
    assert not np.any(held[1:, :6]) and np.all(held[:, 6] == 1.0)


def test_a_card_torn_from_the_closed_fingers_is_reported_and_a_release_is_not(rig: Rig) -> None:
    rig.run("insert_slot1", execute=1)
    assert rig.world.attached and rig.world.slot == 1
    state = rig.arm.read_state()
    # Pulled 2 cm sideways out of the slot's guide with the fingers closed.
    rig.arm.command(state.ee_pose.moved(np.array([0.02, 0.0, 0.0]), np.zeros(3)), state.gripper_closure)
    moved = rig.arm.read_state()
    reason = rig.session.update(moved.joint_positions, moved.gripper_closure)
    assert reason == "part dropped from the closed fingers: now in slot 1, 4.0 mm deep"
    assert not held(rig.world)
    assert rig.session.update(moved.joint_positions, moved.gripper_closure) is None  # reported once


def test_faults_are_injected_by_name_and_reported(rig: Rig) -> None:
    session = rig.session
    assert session.inject("drop") == (False, "nothing to drop: the card is not held")
    assert session.inject("shake") == (False, "unknown fault 'shake'; known: drop, knock, stall")
    rig.run("insert_slot1", execute=1)
    injected, message = session.inject("drop")
    assert injected and message.startswith("injected drop: the card fell from the fingers, now in slot 1")
    # The injected loss is not reported again by the next update.
    state = rig.arm.read_state()
    assert session.update(state.joint_positions, state.gripper_closure) is None
    injected, message = session.inject("knock")
    assert injected and message.startswith("injected knock") and message.endswith("on its side")
    assert rig.session.expert.stuck and session.status()["stuck"] == "True"
    pose = session.reset_scene(randomize=False)
    assert session.signals().home and not session.expert.stuck
    assert pose.position[:2] == pytest.approx(rig.world.part_pose.position[:2])


def test_requests_without_a_known_prompt_or_a_state_are_refused(rig: Rig) -> None:
    with pytest.raises(UnknownPromptError, match=r"unknown prompt 'dance'.*'put the GPU back on the table'"):
        rig.session.answer(rig.request("dance"), KEYS)
    with pytest.raises(ValueError, match=r"'observation/state' must be 8 finite numbers.*shape \(3,\)"):
        rig.session.answer({KEYS.prompt: rig.prompt("recover"), KEYS.state: np.zeros(3)}, KEYS)
    with pytest.raises(ValueError, match="no prompt"):
        rig.session.answer({KEYS.state: np.zeros(8)}, KEYS)


def test_served_over_openpi_a_known_prompt_gets_a_chunk_and_an_unknown_one_an_error(rig: Rig) -> None:
    server = OpenpiServer(partial(rig.session.answer, keys=KEYS), metadata={"policy": "expert"}).start()
    try:
        config = BasePolicy(backend="openpi", uri=server.uri, prompt="unused", views=())
        policy = OpenpiPolicy(config)
        state = rig.arm.read_state()
        proprio = proprio_vector(state.ee_pose, state.gripper_closure)

        def observation(prompt: str) -> Observation:
            return Observation({}, proprio, prompt, 0.0)

        actions = policy.infer(observation(rig.prompt("insert_slot1")))
        expected = rig.session.chunk(
            rig.prompt("insert_slot1"),
            Pose.of(proprio[:3].astype(np.float64), proprio[3:7].astype(np.float64)),
            float(proprio[7]),
        )
        np.testing.assert_allclose(actions, expected, atol=1e-6)
        assert policy.client.metadata == {"policy": "expert"}
        with pytest.raises(OpenpiServerError, match="UnknownPromptError: unknown prompt 'dance'"):
            policy.infer(observation("dance"))
        # The failure closed that connection only: the next request is answered on a new one.
        assert policy.infer(observation(rig.prompt("recover"))).shape == (HORIZON, ACTION_DIM)
        assert (server.answered, server.failed, server.connections) == (2, 1, 2)
        assert server.last_error.startswith("pld_ros.sim.yam_gpu_insertion_session.UnknownPromptError")
    finally:
        server.stop()


def test_the_drop_detector_tells_a_drop_from_a_release() -> None:
    detector = PartDropDetector()
    assert detector.update(False, 0.0) == "" and detector.update(True, 1.0) == ""
    assert detector.update(True, 1.0) == ""
    assert detector.update(False, 1.0) == "part dropped", "lost from closed fingers"
    assert detector.update(False, 1.0) == "", "once per drop"
    detector.update(True, 1.0)
    detector.update(True, 0.6)  # opening: the card is still between the fingers for a tick
    assert detector.update(False, 0.0) == "", "a release"


def test_stages_run_the_behaviour_of_their_head() -> None:
    profile = load_profile("yam_gpu_insertion", sim=True)
    assert profile.reward is not None
    behaviours = {stage.name: expert_stage(stage) for stage in profile.reward.stages}
    assert behaviours["recover"] == "unplug_return" and behaviours["press_slot3"] == "press_slot3"
    with pytest.raises(ValueError, match="head 7"):
        expert_stage(Stage(name="polish", head=7))


def test_a_stalled_policy_holds_still_until_it_is_asked_for_another_stage(rig: Rig) -> None:
    session = rig.session
    assert session.inject("stall") == (False, "nothing to stall: the policy has not been asked yet")
    insert, move = rig.request(rig.prompt("insert_slot1")), rig.request(rig.prompt("move_to_slot3"))
    moving = session.answer(insert, KEYS)[KEYS.actions]
    assert np.abs(moving[0, :3]).max() > 1e-3, "the expert moves toward the card"
    injected, message = session.inject("stall")
    assert injected and message.endswith(repr(rig.prompt("insert_slot1")))
    for _ in range(3):
        held = session.answer(insert, KEYS)[KEYS.actions]
        assert not np.any(held[:, :6]), "a hold for the stalled stage"
    assert np.abs(session.answer(move, KEYS)[KEYS.actions][0, :3]).max() > 1e-3, "another stage is served"
    assert np.abs(session.answer(insert, KEYS)[KEYS.actions][0, :3]).max() > 1e-3, "and the stall is over"
