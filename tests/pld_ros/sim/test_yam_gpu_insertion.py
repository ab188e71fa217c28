"""The yam_gpu_insertion world: its card rules, stage signals, failure injection, cameras and the
scripted expert, driven through the real I2rtArmBackend (on the i2rt SimRobot) and safety filter."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from pld_ros.core.safety import SafetyFilter
from pld_ros.core.spatial import FloatArray, Pose, quat_from_rotvec, quat_multiply
from pld_ros.drivers.i2rt_arm import I2rtArmBackend
from pld_ros.profile import I2rtArm, Profile, load_profile
from pld_ros.sim.yam_gpu_insertion import (
    CARD_HALF,
    FULL_DEPTH,
    HOME,
    HOME_YAW,
    PARTIAL_DEPTH,
    READY_JOINTS,
    SLOT_TOP,
    SLOTS,
    STAGES,
    StageSignals,
    YamGpuInsertionWorld,
)
from pld_ros.sim.yam_gpu_insertion_expert import YamGpuInsertionExpert

# Not square, so that swapped width and height show.
WIDTH, HEIGHT = 112, 96
NO_SIGNAL = StageSignals(False, False, False, False)


@dataclass
class Rig:
    profile: Profile
    config: I2rtArm
    arm: I2rtArmBackend
    world: YamGpuInsertionWorld

    def put(self, pose: Pose, closure: float) -> None:
        """Move the TCP to a pose (a few IK rounds for a long way), then show the world the arm."""
        for _ in range(20):
            self.arm.command(pose, closure)
            if self.arm.last_ik is not None and self.arm.last_ik.converged:
                break
        else:
            pytest.fail(f"IK did not converge: {self.arm.last_ik}")
        self.sync()

    def sync(self) -> None:
        state = self.arm.read_state()
        self.world.update(state.joint_positions, state.gripper_closure)

    def grasp_pose(self, *, above: float = 0.0, turn: float = 0.0) -> Pose:
        """Top-down TCP pose closing across the card's thickness 1.5 cm below its top, raised by
        ``above`` and turned about the vertical by ``turn``; of the two such poses, the one
        closer to the current TCP orientation."""
        card = self.world.part_pose.matrix()
        across = card[:3, 1] if card[:3, 1] @ self.world.tcp_pose.matrix()[:3, 1] >= 0.0 else -card[:3, 1]
        down = np.array([0.0, 0.0, -1.0])
        m = np.eye(4)
        m[:3, :3] = np.column_stack([np.cross(across, down), across, down])
        m[:3, 3] = card[:3, 3] + [0.0, 0.0, CARD_HALF[2] - 0.015 + above]
        pose = Pose.from_matrix(m)
        return Pose(
            pose.position, quat_multiply(quat_from_rotvec(np.array([0.0, 0.0, turn])), pose.orientation)
        )


@pytest.fixture
def rig() -> Iterator[Rig]:
    profile = load_profile("yam_gpu_insertion", sim=True)
    config = profile.arms["left"]
    assert isinstance(config, I2rtArm)
    arm = I2rtArmBackend(config, sim=True, joint_speed=4.0)
    arm.connect()
    arm.move_joints(READY_JOINTS)
    world = YamGpuInsertionWorld(arm.model_path, render_width=WIDTH, render_height=HEIGHT)
    rig = Rig(profile, config, arm, world)
    rig.sync()
    try:
        yield rig
    finally:
        world.close()
        arm.close()


def raised(pose: Pose, dz: float) -> Pose:
    return Pose(pose.position + np.array([0.0, 0.0, dz]), pose.orientation)


# Calls, not properties, where the state changes between asserts: mypy narrows a property
# across calls it does not know change it.
def held(world: YamGpuInsertionWorld) -> bool:
    return world.attached


def stuck(expert: YamGpuInsertionExpert) -> bool:
    return expert.stuck


def test_card_attaches_when_the_fingers_close_on_it_and_falls_when_they_open(rig: Rig) -> None:
    world = rig.world
    home = world.part_pose
    rig.put(rig.grasp_pose(above=0.05), 0.0)
    rig.put(rig.grasp_pose(), 0.0)
    assert not held(world)  # open fingers around it hold nothing
    rig.put(rig.grasp_pose(), 1.0)
    assert held(world)
    rig.put(raised(rig.grasp_pose(), 0.06), 1.0)
    assert world.part_pose.position[2] == pytest.approx(home.position[2] + 0.06, abs=1e-4)
    assert world.signals() == NO_SIGNAL  # held in the air is no stage's success
    rig.put(rig.grasp_pose(), 0.0)
    assert not held(world)
    # Let go 6 cm up: it fell back onto the table where it was, upright.
    np.testing.assert_allclose(world.part_pose.position, home.position, atol=1e-4)
    assert world.on_table and world.upright


@pytest.mark.parametrize(
    ("case", "above", "turn", "beside"),
    [
        ("fingers closed beside the card", 0.0, 0.0, 0.06),
        ("fingers closed above the card", 0.025, 0.0, 0.0),
        ("fingers along the card's length (it does not fit)", 0.0, math.pi / 2, 0.0),
    ],
)
def test_closing_without_the_card_between_the_fingers_grasps_nothing(
    rig: Rig, case: str, above: float, turn: float, beside: float
) -> None:
    world = rig.world
    before = world.part_pose.position.copy()
    grasp = rig.grasp_pose(turn=turn)
    # Beside: across the card's thickness (x at home), clear of its 2 cm.
    pose = Pose(grasp.position + np.array([beside, 0.0, above]), grasp.orientation)
    rig.put(raised(pose, 0.05), 0.0)
    rig.put(pose, 0.0)
    rig.put(pose, 1.0)
    assert not held(world), case
    # Closed fingers sliding onto it afterwards do not pick it up either.
    rig.put(grasp, 1.0)
    rig.put(raised(grasp, 0.05), 1.0)
    assert not held(world), case
    np.testing.assert_allclose(world.part_pose.position, before, atol=1e-9)


def carry_over_slot(rig: Rig, slot: int, offset: float = 0.0) -> Pose:
    """Pick the card at home and hold it 3 cm above a slot (offset across it); the TCP pose."""
    rig.put(rig.grasp_pose(above=0.05), 0.0)
    rig.put(rig.grasp_pose(), 0.0)
    rig.put(rig.grasp_pose(), 1.0)
    assert held(rig.world)
    grasp = rig.grasp_pose()
    x, y = SLOTS[slot]
    card_to_tcp = grasp.position - rig.world.part_pose.position
    over = Pose(np.array([x + offset, y, SLOT_TOP + 0.03 + CARD_HALF[2]]) + card_to_tcp, grasp.orientation)
    rig.put(raised(grasp, 0.08), 1.0)
    rig.put(over, 1.0)
    return over


def test_a_held_card_enters_an_aligned_slot_only_to_the_latch(rig: Rig) -> None:
    world = rig.world
    over = carry_over_slot(rig, 1)
    rig.put(raised(over, -0.03 - 0.01), 1.0)  # 1 cm deeper than the latch allows
    assert world.slot == 1 and world.depth == pytest.approx(PARTIAL_DEPTH)
    assert held(world)  # it slipped in the fingers instead
    assert world.signals() == StageSignals(True, False, False, False)
    rig.put(raised(world.tcp_pose, -0.005), 1.0)  # and once in, pushing on does not seat it
    assert world.depth == pytest.approx(PARTIAL_DEPTH)
    rig.put(raised(world.tcp_pose, 0.002), 1.0)  # lifting draws it out as far
    assert world.depth == pytest.approx(PARTIAL_DEPTH - 0.002, abs=2e-4) and held(world)
    assert world.signals() == NO_SIGNAL  # no longer latched
    # Sideways out of the slot's guide: the grasp gives, the card stays in the slot.
    rig.put(Pose(world.tcp_pose.position + np.array([0.02, 0.0, 0.0]), over.orientation), 1.0)
    assert not held(world) and world.slot == 1


def test_a_misaligned_card_rests_on_the_connector(rig: Rig) -> None:
    world = rig.world
    over = carry_over_slot(rig, 3, offset=0.0035)
    rig.put(raised(over, -0.04), 1.0)
    assert world.slot is None
    assert world.part_pose.position[2] - CARD_HALF[2] == pytest.approx(SLOT_TOP, abs=1e-6)
    assert world.signals() == NO_SIGNAL
    # Released there, it does not drop in either (3.5 mm across is beyond the 3 mm tolerance).
    rig.put(world.tcp_pose, 0.0)
    assert world.slot is None and world.signals() == NO_SIGNAL


def test_pressing_needs_the_closed_fingertips_on_the_top_edge(rig: Rig) -> None:
    world = rig.world
    over = carry_over_slot(rig, 3)
    rig.put(raised(over, -0.02), 1.0)
    rig.put(raised(over, -0.02), 0.0)  # let go 1 cm above the connector: it drops in to the latch
    assert world.slot == 3 and world.depth == pytest.approx(PARTIAL_DEPTH)
    assert world.signals() == StageSignals(False, True, False, False)
    top = world.part_pose.position[2] + CARD_HALF[2]
    above = Pose(np.array([*SLOTS[3], top + 0.02]), over.orientation)
    rig.put(above, 0.0)
    # Open fingers straddle the card's top: no push.
    rig.put(raised(above, -0.025), 0.0)
    assert world.depth == pytest.approx(PARTIAL_DEPTH)
    rig.put(above, 0.0)
    rig.put(above, 1.0)
    rig.put(raised(above, -0.02 - 0.002), 1.0)  # 2 mm onto the top edge
    assert world.depth == pytest.approx(PARTIAL_DEPTH + 0.002, abs=2e-4)  # IK: within 0.1 mm
    assert world.signals() == StageSignals(False, True, False, False)
    rig.put(raised(above, -0.02 - 0.01), 1.0)
    assert world.depth == pytest.approx(FULL_DEPTH)
    assert world.signals() == StageSignals(False, False, True, False)


def test_each_stage_signal_fires_only_in_its_situation(rig: Rig) -> None:
    world = rig.world
    cases: list[tuple[str, StageSignals]] = []

    def check(name: str) -> None:
        cases.append((name, world.signals()))

    world.reset_scene(randomize=False)
    check("home")
    world.place(HOME[0] + 0.02, HOME[1] - 0.02, HOME_YAW + math.pi + 0.2)
    check("home, shifted and turned within tolerance")
    world.place(HOME[0], HOME[1], HOME_YAW + math.pi / 2)
    check("home, across")
    world.place(HOME[0] - 0.1, HOME[1] - 0.1, HOME_YAW)
    check("table, away from home")
    world.place(*SLOTS[1], HOME_YAW + 0.3)
    check("standing across slot 1's connector")
    for slot, depth in ((1, PARTIAL_DEPTH), (1, FULL_DEPTH), (3, PARTIAL_DEPTH), (3, 0.006), (3, FULL_DEPTH)):
        world.insert(slot, depth)
        check(f"slot {slot} at {depth * 1e3:.0f} mm")
    world.reset_scene(randomize=False)
    world.knock_part((0.0, 0.0))
    check("home, lying on its side")

    expected = {
        "home": StageSignals(False, False, False, True),
        "home, shifted and turned within tolerance": StageSignals(False, False, False, True),
        "home, across": NO_SIGNAL,
        "table, away from home": NO_SIGNAL,
        "standing across slot 1's connector": NO_SIGNAL,
        "slot 1 at 4 mm": StageSignals(True, False, False, False),
        "slot 1 at 8 mm": StageSignals(True, False, False, False),
        "slot 3 at 4 mm": StageSignals(False, True, False, False),
        "slot 3 at 6 mm": StageSignals(False, True, False, False),
        "slot 3 at 8 mm": StageSignals(False, False, True, False),
        "home, lying on its side": NO_SIGNAL,
    }
    assert dict(cases) == expected
    for signals in expected.values():
        assert [signals.of(stage) for stage in STAGES] == [
            signals.inserted_slot1,
            signals.at_slot3,
            signals.pressed_slot3,
            signals.home,
        ]


def run_stage(
    rig: Rig,
    expert: YamGpuInsertionExpert,
    safety: SafetyFilter,
    stage: str,
    *,
    max_ticks: int,
    on_tick: Callable[[], None] | None = None,
) -> int:
    """Run the expert through the safety filter and the backend until the stage's signal holds
    for the profile's debounce frames; the ticks it took (fails after ``max_ticks``)."""
    assert rig.profile.reward is not None
    debounce = next(s.debounce_frames for s in rig.profile.reward.stages if s.name == stage)
    streak = 0
    for tick in range(max_ticks):
        state = rig.arm.read_state()
        rig.world.update(state.joint_positions, state.gripper_closure)
        if on_tick is not None:
            on_tick()
        streak = streak + 1 if rig.world.signals().of(stage) else 0
        if streak >= debounce:
            return tick
        command = expert.act(stage, state.ee_pose, state.gripper_closure)
        output = safety.step(command, state.ee_pose)
        rig.arm.command(output.target, output.gripper)
    pytest.fail(
        f"{stage} not done in {max_ticks} ticks: {rig.world.signals()}, card at {rig.world.part_pose}"
    )


def start_expert(rig: Rig) -> tuple[YamGpuInsertionExpert, SafetyFilter]:
    safety = SafetyFilter(rig.config.safety)
    state = rig.arm.read_state()
    safety.reset(state.ee_pose, state.gripper_closure)
    return YamGpuInsertionExpert(rig.world), safety


def test_expert_completes_a_full_cycle_within_the_safety_limits(rig: Rig) -> None:
    expert, safety = start_expert(rig)
    assert rig.profile.reward is not None
    timeouts = {s.name: s.timeout for s in rig.profile.reward.stages}
    began = time.monotonic()
    ticks = {
        stage: run_stage(rig, expert, safety, stage, max_ticks=int(timeouts[stage] * 20)) for stage in STAGES
    }
    print(f"expert cycle: {ticks} ticks at 20 Hz, {time.monotonic() - began:.2f} s of compute")
    assert rig.world.signals() == StageSignals(False, False, False, True)
    assert not rig.world.attached
    # The expert stays inside the profile's limits: the filter never had to clip it.
    assert sum(safety.counters.values()) == 0, safety.counters


def test_a_drop_mid_transport_is_detected_and_the_expert_picks_the_card_up_again(rig: Rig) -> None:
    world = rig.world
    assert not world.drop_part()  # nothing held, nothing to drop
    expert, safety = start_expert(rig)
    dropped: list[tuple[bool, bool, float, StageSignals]] = []

    def drop() -> None:
        # Once, as soon as the card is lifted clear and has left its home area for the slot.
        card = world.part_pose.position
        if not dropped and world.attached and card[2] > 0.07 and math.dist(card[:2], HOME) > 0.06:
            was_held = world.drop_part()
            dropped.append((was_held, world.attached, float(world.part_pose.position[2]), world.signals()))

    run_stage(rig, expert, safety, "insert_slot1", max_ticks=400, on_tick=drop)
    [(was_held, attached, height, signals)] = dropped
    assert was_held and not attached
    # Fell flat where it was (onto the board or the table), so not in slot 1.
    assert height == pytest.approx(CARD_HALF[2], abs=0.0025)
    assert signals == NO_SIGNAL
    # ... and the expert went back for it.
    assert world.slot == 1 and world.signals().inserted_slot1


def test_a_knocked_over_card_stops_the_expert(rig: Rig) -> None:
    world = rig.world
    expert, _ = start_expert(rig)
    world.knock_part((0.0, 0.0))
    assert not world.upright and world.part_pose.position[2] == pytest.approx(CARD_HALF[1])
    state = rig.arm.read_state()
    assert stuck(expert)
    command = expert.act("insert_slot1", state.ee_pose, state.gripper_closure)
    assert not np.any(command.translation) and not np.any(command.rotation)
    world.reset_scene(randomize=False)
    world.knock_part((0.0, -0.5))  # over the table's edge
    assert world.part_pose.position[2] < -0.7 and stuck(expert) and world.signals() == NO_SIGNAL
    world.reset_scene(seed=3)
    assert not stuck(expert) and world.signals().home


def test_cameras_render_what_their_intrinsics_and_poses_say(rig: Rig) -> None:
    world = rig.world
    rig.put(rig.grasp_pose(above=0.08), 0.0)
    card = world.part_pose.matrix()
    # Points of the card that each camera must see, projected through its K and optical frame:
    # the wrist camera looks down onto the card's dark top edge, the side camera at its orange
    # broad face (the one turned towards it).
    side_eye = world.camera_pose("side").position
    broad = card[:3, 1] * CARD_HALF[1] * np.sign(card[:3, 1] @ (side_eye - card[:3, 3]))
    expected: dict[str, tuple[FloatArray, Callable[[int, int, int], bool]]] = {
        "wrist": (card[:3, 3] + card[:3, 2] * CARD_HALF[2], lambda r, g, b: max(r, g, b) < 90),
        "side": (card[:3, 3] + broad, lambda r, g, b: r > 150 and r > g + 40 and g > b),
    }
    seconds = []
    for camera, (point, looks_right) in expected.items():
        image = world.render(camera)
        began = time.perf_counter()
        image = world.render(camera)
        seconds.append(time.perf_counter() - began)
        assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
        optical = world.camera_pose(camera).matrix()
        in_camera = optical[:3, :3].T @ (point - optical[:3, 3])
        assert in_camera[2] > 0.0, f"{camera} looks away from the card"
        fx, fy, cx, cy = world.intrinsics(camera)
        column, row = (
            round(fx * in_camera[0] / in_camera[2] + cx),
            round(fy * in_camera[1] / in_camera[2] + cy),
        )
        assert 0 <= column < WIDTH and 0 <= row < HEIGHT, (camera, column, row)
        red, green, blue = (int(c) for c in image[row, column])
        assert looks_right(red, green, blue), (camera, (column, row), (red, green, blue))
    print(f"render ms: wrist {seconds[0] * 1e3:.1f}, side {seconds[1] * 1e3:.1f} at {WIDTH}x{HEIGHT}")
    # Generous: llvmpipe on two shared cores.
    assert max(seconds) < 0.5
    with pytest.raises(KeyError):
        world.render("top")


def test_update_refuses_non_finite_joints(rig: Rig) -> None:
    with pytest.raises(ValueError, match="finite"):
        rig.world.update((0.0, math.nan, 0.0, 0.0, 0.0, 0.0), 0.0)
    with pytest.raises(ValueError, match="finite"):
        rig.world.update(READY_JOINTS, math.inf)
