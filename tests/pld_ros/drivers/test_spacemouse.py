"""The SpaceMouse drivers: the scripted twin, and the real one failing clearly without a device.

No SpaceMouse (and no hidapi) exists on this machine, so the real driver is only tested for its
error; the twin stands in for the device everywhere else.
"""

from __future__ import annotations

import pytest

from pld_ros.core.teleop import SPACEMOUSE_IDLE, SpaceMouseMapping, SpaceMouseReading
from pld_ros.drivers.spacemouse import (
    SIM_SCRIPT,
    PySpaceMouse,
    ScriptedSpaceMouse,
    SpaceMouseError,
    script,
)
from pld_ros.profile import Teleop


def test_twin_plays_its_script_once_then_rests() -> None:
    pushed = SpaceMouseReading(axes=(0.5, 0.0, 0.0, 0.0, 0.0, -0.5), buttons=(False, True))
    twin = ScriptedSpaceMouse(script([(2, pushed), (1, SPACEMOUSE_IDLE), (1, pushed)]))
    with pytest.raises(SpaceMouseError, match="not open"):
        twin.read()
    twin.open()
    assert [twin.read() for _ in range(4)] == [pushed, pushed, SPACEMOUSE_IDLE, pushed]
    assert twin.read() == SPACEMOUSE_IDLE and twin.read() == SPACEMOUSE_IDLE
    twin.close()
    with pytest.raises(SpaceMouseError):
        twin.read()


def test_sim_script_is_a_forward_push_with_one_gripper_toggle() -> None:
    mapping = SpaceMouseMapping(Teleop(), 20.0)
    twin = ScriptedSpaceMouse(SIM_SCRIPT)
    twin.open()
    inputs = [mapping.map(twin.read()) for _ in range(len(SIM_SCRIPT) + 5)]
    active = [human for human in inputs if human.active]
    assert len(active) == 20
    assert all(h.translation[0] > 0.0 and h.translation[1:] == (0.0, 0.0) for h in active)
    assert sum(h.toggle_gripper for h in inputs) == 1
    assert not any(h.active for h in inputs[-5:])


def test_opening_without_a_device_fails_with_a_clear_error() -> None:
    mouse = PySpaceMouse()
    with pytest.raises(SpaceMouseError, match=r"hidapi is not installed|no SpaceMouse connected"):
        mouse.open()
    with pytest.raises(SpaceMouseError, match="not open"):
        mouse.read()
    mouse.close()  # closing what never opened is harmless
