"""Keyboard and SpaceMouse mappings and the takeover session: speeds, deadband, toggles, hold time, signs."""

from __future__ import annotations

import numpy as np
import pytest

from pld_ros.core.teleop import (
    GRIPPER_REPEAT_GAP,
    IDLE,
    SPACEMOUSE_IDLE,
    HumanInput,
    KeyboardMapping,
    SpaceMouseMapping,
    SpaceMouseReading,
    TeleopCommand,
    TeleopSession,
    keymap_help,
)
from pld_ros.profile import Teleop

RATE = 20.0
SETTINGS = Teleop(translation_speed=0.1, rotation_speed=0.5, deadband=0.1, hold_time=0.2)
STEP = 0.1 / RATE
TURN = 0.5 / RATE


def reading(*axes: float, buttons: tuple[bool, ...] = ()) -> SpaceMouseReading:
    values = (*axes, *(0.0,) * (6 - len(axes)))
    return SpaceMouseReading(axes=values, buttons=buttons)  # type: ignore[arg-type]


# -- keyboard ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "translation", "rotation"),
    [
        ("w", (STEP, 0, 0), (0, 0, 0)),
        ("s", (-STEP, 0, 0), (0, 0, 0)),
        ("a", (0, STEP, 0), (0, 0, 0)),
        ("d", (0, -STEP, 0), (0, 0, 0)),
        ("r", (0, 0, STEP), (0, 0, 0)),
        ("f", (0, 0, -STEP), (0, 0, 0)),
        ("j", (0, 0, 0), (TURN, 0, 0)),
        ("l", (0, 0, 0), (-TURN, 0, 0)),
        ("i", (0, 0, 0), (0, TURN, 0)),
        ("k", (0, 0, 0), (0, -TURN, 0)),
        ("q", (0, 0, 0), (0, 0, TURN)),
        ("e", (0, 0, 0), (0, 0, -TURN)),
        ("W", (STEP, 0, 0), (0, 0, 0)),
    ],
)
def test_each_key_moves_one_axis_at_the_profile_speed(
    key: str, translation: tuple[float, ...], rotation: tuple[float, ...]
) -> None:
    keys = KeyboardMapping(SETTINGS, RATE)
    assert keys.press(key, 10.0)
    human = keys.tick(10.0)
    assert human.active and not human.toggle_gripper
    np.testing.assert_allclose(human.translation, translation, atol=1e-12)
    np.testing.assert_allclose(human.rotation, rotation, atol=1e-12)


def test_a_key_counts_as_held_for_hold_time_then_expires() -> None:
    keys = KeyboardMapping(SETTINGS, RATE)
    keys.press("w", 10.0)
    assert keys.tick(10.0).active
    assert keys.tick(10.19).translation == (STEP, 0.0, 0.0)
    assert keys.tick(10.201) == IDLE
    # Auto-repeat events keep the key held for as long as they come.
    for t in np.arange(11.0, 12.0, 0.033):
        keys.press("w", float(t))
        assert keys.tick(float(t) + 0.01).active
    assert keys.tick(12.0 + SETTINGS.hold_time) == IDLE


def test_opposite_keys_cancel_and_unbound_keys_are_refused() -> None:
    keys = KeyboardMapping(SETTINGS, RATE)
    assert keys.press("w", 1.0) and keys.press("s", 1.0) and keys.press("a", 1.0)
    assert not keys.press("z", 1.0) and not keys.press("[", 1.0)
    np.testing.assert_allclose(keys.tick(1.0).translation, (0.0, STEP, 0.0), atol=1e-12)


def test_release_key_ends_control_at_once() -> None:
    keys = KeyboardMapping(SETTINGS, RATE)
    keys.press("w", 1.0)
    keys.press(" ", 1.0)
    assert keys.press("x", 1.01)
    assert keys.tick(1.02) == IDLE


def test_space_toggles_once_per_press_not_per_auto_repeat() -> None:
    keys = KeyboardMapping(SETTINGS, RATE)
    keys.press(" ", 1.0)
    first = keys.tick(1.0)
    assert first.active and first.toggle_gripper and first.translation == (0.0, 0.0, 0.0)
    assert not keys.tick(1.05).toggle_gripper, "a toggle is reported once"
    # Held: auto-repeat after 0.5 s, then every 33 ms; none of these is a new press.
    for t in np.arange(1.5, 3.0, 0.033):
        keys.press(" ", float(t))
        assert not keys.tick(float(t)).toggle_gripper
    keys.press(" ", 3.0 + GRIPPER_REPEAT_GAP + 0.01)
    assert keys.tick(3.0 + GRIPPER_REPEAT_GAP + 0.01).toggle_gripper


def test_keymap_help_names_every_key() -> None:
    text = keymap_help()
    for pair in ("w/s", "a/d", "r/f", "j/l", "i/k", "q/e", "space", "x  release"):
        assert pair in text


def test_a_non_positive_control_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="control_rate"):
        KeyboardMapping(SETTINGS, 0.0)
    with pytest.raises(ValueError, match="control_rate"):
        SpaceMouseMapping(SETTINGS, float("nan"))


# -- SpaceMouse ----------------------------------------------------------------------------------


def test_full_deflection_is_full_speed_and_the_deadband_reads_zero() -> None:
    mouse = SpaceMouseMapping(SETTINGS, RATE)
    assert mouse.map(SPACEMOUSE_IDLE) == IDLE
    assert mouse.map(reading(0.09, -0.1, 0.05, 0.1, -0.02, 0.0)) == IDLE
    full = mouse.map(reading(1.0, 0.0, -1.0, 0.0, 1.0, 0.0))
    assert full.active
    np.testing.assert_allclose(full.translation, (STEP, 0.0, -STEP))
    np.testing.assert_allclose(full.rotation, (0.0, TURN, 0.0))
    # Outside the deadband the speed rises from zero at its edge, without a jump.
    half = mouse.map(reading(0.55))
    np.testing.assert_allclose(half.translation, (0.5 * STEP, 0.0, 0.0))
    np.testing.assert_allclose(mouse.map(reading(0.1001)).translation[0], 0.0, atol=STEP * 1e-3)
    # Readings beyond full scale (the device's counts overshoot its nominal range) are capped.
    np.testing.assert_allclose(mouse.map(reading(0.0, -1.4)).translation, (0.0, -STEP, 0.0))


def test_identity_frame_keeps_signs_and_a_turned_operator_flips_x_and_y() -> None:
    pushed = reading(0.6, 0.6, 0.6, 0.6, 0.6, 0.6)
    behind = SpaceMouseMapping(SETTINGS, RATE).map(pushed)
    assert all(v > 0 for v in (*behind.translation, *behind.rotation))
    facing = SpaceMouseMapping(SETTINGS, RATE, device_to_base=np.diag([-1.0, -1.0, 1.0])).map(pushed)
    np.testing.assert_allclose(facing.translation, np.multiply(behind.translation, (-1, -1, 1)))
    np.testing.assert_allclose(facing.rotation, np.multiply(behind.rotation, (-1, -1, 1)))


def test_device_to_base_must_be_a_rotation() -> None:
    for bad in (np.diag([1.0, 1.0, -1.0]), 2.0 * np.eye(3), np.eye(2)):
        with pytest.raises(ValueError, match="rotation matrix"):
            SpaceMouseMapping(SETTINGS, RATE, device_to_base=bad)


def test_gripper_button_toggles_on_press_and_any_button_keeps_the_human_active() -> None:
    mouse = SpaceMouseMapping(SETTINGS, RATE)
    down = mouse.map(reading(buttons=(True, False)))
    assert down.active and down.toggle_gripper
    held = mouse.map(reading(buttons=(True, False)))
    assert held.active and not held.toggle_gripper
    assert mouse.map(reading(buttons=(False, False))) == IDLE
    other = mouse.map(reading(buttons=(False, True)))
    assert other.active and not other.toggle_gripper
    assert mouse.map(reading(buttons=(True, False))).toggle_gripper


def test_a_bad_reading_is_refused() -> None:
    with pytest.raises(ValueError, match="6 finite axes"):
        SpaceMouseReading(axes=(0.0, float("nan"), 0.0, 0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="6 finite axes"):
        SpaceMouseReading(axes=(0.0, 0.0, 0.0))  # type: ignore[arg-type]


# -- session -------------------------------------------------------------------------------------


def test_takeover_holds_the_measured_closure_until_toggled() -> None:
    session = TeleopSession()
    engaged: list[bool] = []

    def step(human: HumanInput, closure: float) -> TeleopCommand | None:
        command = session.step(human, closure, False)
        engaged.append(session.engaged)
        return command

    move = HumanInput(active=True, translation=(STEP, 0.0, 0.0))
    toggle = HumanInput(active=True, toggle_gripper=True)
    assert step(IDLE, 0.3) is None
    command = step(move, 0.3)
    assert command == TeleopCommand((STEP, 0.0, 0.0), (0.0, 0.0, 0.0), 0.3)
    # The measured closure changes under the human's hold (the gripper moving there): the target stays.
    assert step(move, 0.9) == command
    closed = step(toggle, 0.3)
    assert closed is not None and closed.gripper == 1.0
    opened = step(toggle, 1.0)
    assert opened is not None and opened.gripper == 0.0
    # Idle ends the hold; the next takeover starts from the gripper as it is then.
    assert step(IDLE, 0.0) is None
    again = step(move, 0.8)
    assert again is not None and again.gripper == pytest.approx(0.8)
    assert engaged == [False, True, True, True, True, False, True]


def test_a_grasp_is_held_closed_and_toggles_open() -> None:
    session = TeleopSession()
    command = session.step(HumanInput(active=True), 0.45, True)
    assert command is not None and command.gripper == 1.0
    opened = session.step(HumanInput(active=True, toggle_gripper=True), 0.45, True)
    assert opened is not None and opened.gripper == 0.0


def test_command_as_action_vector() -> None:
    action = TeleopCommand((0.01, -0.02, 0.03), (0.1, 0.2, -0.3), 0.75).action()
    assert action.dtype == np.float32
    np.testing.assert_allclose(action, [0.01, -0.02, 0.03, 0.1, 0.2, -0.3, 0.75], rtol=1e-6)
