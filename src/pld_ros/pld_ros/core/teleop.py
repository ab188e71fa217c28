"""Human takeover: keyboard keys and SpaceMouse deflections turned into per-tick pose deltas.

A human may take the arm over at any time. The ``teleop`` node turns the device's input into one
:class:`TeleopCommand` per control tick while the human acts; the residual node forwards those as
the arm command, so they pass the arm driver's safety layer and are recorded as HUMAN steps.

The pieces, all free of ROS:

- :class:`KeyboardMapping`: key events -> :class:`HumanInput` (motion for this tick, a gripper
  toggle, whether the human is acting).
- :class:`SpaceMouseMapping`: one :class:`SpaceMouseReading` (6 axes, buttons) -> :class:`HumanInput`.
- :class:`TeleopSession`: keeps the gripper closure the human holds and turns each active
  :class:`HumanInput` into a :class:`TeleopCommand`.

Units and frames follow :mod:`pld_ros.core.observation`: translation (m) and axis-angle rotation
(rad) per tick in the arm's base frame, absolute gripper closure in [0, 1] (0 open).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from pld_ros.core.observation import Float32Array, hold_action
from pld_ros.core.spatial import FloatArray
from pld_ros.profile import Teleop, Vector3

_ZERO: Final[Vector3] = (0.0, 0.0, 0.0)

KEY_AXES: Final[Mapping[str, tuple[int, float]]] = {
    "w": (0, 1.0),
    "s": (0, -1.0),
    "a": (1, 1.0),
    "d": (1, -1.0),
    "r": (2, 1.0),
    "f": (2, -1.0),
    "j": (3, 1.0),
    "l": (3, -1.0),
    "i": (4, 1.0),
    "k": (4, -1.0),
    "q": (5, 1.0),
    "e": (5, -1.0),
}
"""Motion keys: key -> (axis, sign); axes 0-2 translate along base x y z, 3-5 turn about them.

REP-103 base frame: x forward (away from the robot base), y left, z up. The first key of each
pair moves positively: w/s x, a/d y (a = left), r/f z (r = up), j/l roll about x, i/k pitch about
y, q/e yaw about z (q = counter-clockwise seen from above). Letters only, so the layout works in a
plain terminal without arrow keys (which arrive as escape sequences)."""
GRIPPER_KEY: Final = " "
"""Space toggles the gripper between open (0) and closed (1)."""
RELEASE_KEY: Final = "x"
"""Ends the human's control at once instead of after ``hold_time``."""
GRIPPER_REPEAT_GAP: Final = 0.7
"""Seconds: a gripper key event this soon after the previous one is the key being held (terminal
auto-repeat, which starts after a 0.25-0.6 s delay), not a new press, so holding space toggles once."""

SPACEMOUSE_TO_BASE: Final[FloatArray] = np.eye(3)
"""Rotation from the SpaceMouse frame to the robot base frame (3 x 3, applied to both the
translation and the rotation axes; a proper rotation, so axis-angle vectors map like vectors).

The SpaceMouse frame is pyspacemouse's ``AxisConvention.ROS`` (the driver opens the device with
it): x away from the user, y to the user's left, z up; roll, pitch and yaw turn right-handed about
x, y and z. The identity fits an operator who faces the way the robot's base x axis points (standing
behind the robot): pushing the cap away moves the gripper forward, twisting it counter-clockwise
yaws the gripper counter-clockwise. An operator facing the robot from the front wants
``diag(-1, -1, 1)`` (pass it as ``SpaceMouseMapping(device_to_base=...)``)."""
SPACEMOUSE_AXES: Final = ("x", "y", "z", "roll", "pitch", "yaw")
"""Order of :attr:`SpaceMouseReading.axes` (pyspacemouse's state fields)."""
GRIPPER_BUTTON: Final = 0
"""SpaceMouse button that toggles the gripper (the left one on two-button models)."""


def _vector(values: FloatArray) -> Vector3:
    return (float(values[0]), float(values[1]), float(values[2]))


@dataclass(frozen=True)
class TeleopCommand:
    """The human's step for one control tick (the contents of a ``<arm>/teleop`` message)."""

    translation: Vector3
    """m, base frame."""
    rotation: Vector3
    """rad, axis-angle vector in the base frame, about the end effector."""
    gripper: float
    """Absolute closure target in [0, 1], 0 fully open."""

    def action(self) -> Float32Array:
        """The command as a 7-vector action (see :mod:`pld_ros.core.observation`)."""
        action = hold_action(self.gripper)
        action[0:3] = self.translation
        action[3:6] = self.rotation
        return action


@dataclass(frozen=True)
class HumanInput:
    """What an input device says for one control tick, in base-frame per-tick units."""

    active: bool
    """The human is acting: they keep control of the arm this tick."""
    translation: Vector3 = _ZERO
    """m this tick."""
    rotation: Vector3 = _ZERO
    """rad this tick (axis-angle)."""
    toggle_gripper: bool = False
    """The gripper key or button was pressed (once per press)."""


IDLE: Final = HumanInput(active=False)


def _per_tick(settings: Teleop, control_rate: float) -> tuple[float, float]:
    if not (math.isfinite(control_rate) and control_rate > 0.0):
        raise ValueError(f"control_rate must be a positive number of Hz, got {control_rate}")
    return settings.translation_speed / control_rate, settings.rotation_speed / control_rate


class KeyboardMapping:
    """Key events -> per-tick motion, for keys read one at a time from a terminal.

    A terminal reports key presses, never releases: a held key arrives as a stream of auto-repeat
    events (after an initial delay of typically 0.25-0.6 s, then ~30 per second), and only the
    most recently pressed key repeats. So a key event counts as the key being held for
    ``hold_time`` seconds after it. A tap therefore moves the arm for ``hold_time``; a key held
    down moves it for ``hold_time``, may pause until auto-repeat starts (when ``hold_time`` is
    shorter than the repeat delay), then moves steadily until ``hold_time`` after it is let go.
    """

    def __init__(self, settings: Teleop, control_rate: float) -> None:
        self._translation_step, self._rotation_step = _per_tick(settings, control_rate)
        self._hold_time = settings.hold_time
        self._last_event: dict[str, float] = {}
        self._last_gripper_event = -math.inf
        self._toggle = False

    def press(self, key: str, now: float) -> bool:
        """Record one key event at ``now`` (s, monotonic); False when the key is not bound."""
        key = key.lower()  # caps lock or shift must not disable the keys
        if key == RELEASE_KEY:
            self._last_event.clear()
            self._toggle = False
            return True
        if key == GRIPPER_KEY:
            if now - self._last_gripper_event > GRIPPER_REPEAT_GAP:
                self._toggle = True
            self._last_gripper_event = now
        elif key not in KEY_AXES:
            return False
        self._last_event[key] = now
        return True

    def tick(self, now: float) -> HumanInput:
        """The input for the control tick at ``now``: every key seen within ``hold_time`` counts."""
        held = [key for key, seen in self._last_event.items() if now - seen < self._hold_time]
        self._last_event = {key: self._last_event[key] for key in held}
        toggle, self._toggle = self._toggle, False
        if not held:
            return IDLE
        direction = np.zeros(6)
        for key in held:
            if key in KEY_AXES:
                axis, sign = KEY_AXES[key]
                direction[axis] += sign
        return HumanInput(
            active=True,
            translation=_vector(direction[:3] * self._translation_step),
            rotation=_vector(direction[3:] * self._rotation_step),
            toggle_gripper=toggle,
        )


def keymap_help() -> str:
    """The key map as shown to the operator."""
    return "\n".join(
        (
            "keyboard teleop (keys act in the robot base frame: x forward, y left, z up)",
            "  w/s  forward/back     a/d  left/right      r/f  up/down",
            "  j/l  roll +/-         i/k  pitch +/-       q/e  yaw +/- (q = counter-clockwise)",
            "  space  toggle gripper     x  release control     Ctrl-C  quit",
        )
    )


@dataclass(frozen=True)
class SpaceMouseReading:
    """One read of a SpaceMouse: six axes in [-1, 1] and the buttons' states."""

    axes: tuple[float, float, float, float, float, float]
    """x y z roll pitch yaw in the SpaceMouse frame (see :data:`SPACEMOUSE_TO_BASE`)."""
    buttons: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        if len(self.axes) != len(SPACEMOUSE_AXES) or not all(math.isfinite(v) for v in self.axes):
            raise ValueError(f"a SpaceMouse reading needs 6 finite axes {SPACEMOUSE_AXES}, got {self.axes}")


SPACEMOUSE_IDLE: Final = SpaceMouseReading(axes=(0.0, 0.0, 0.0, 0.0, 0.0, 0.0))


class SpaceMouseMapping:
    """SpaceMouse readings -> per-tick motion, scaled by the profile's speeds.

    An axis inside ``deadband`` reads as zero (the cap never rests exactly at zero); outside it
    the deflection is rescaled so the speed rises from zero at the deadband's edge to full speed
    at full deflection, with no jump. The human is active while an axis is outside the deadband or
    a button is pressed; :data:`GRIPPER_BUTTON` toggles the gripper when it goes down.
    """

    def __init__(
        self, settings: Teleop, control_rate: float, device_to_base: FloatArray = SPACEMOUSE_TO_BASE
    ) -> None:
        self._translation_step, self._rotation_step = _per_tick(settings, control_rate)
        rotation = np.asarray(device_to_base, dtype=np.float64)
        if (
            rotation.shape != (3, 3)
            or not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-6)
            or not np.isclose(np.linalg.det(rotation), 1.0, atol=1e-6)
        ):
            raise ValueError(f"device_to_base must be a 3 x 3 rotation matrix, got {rotation.tolist()}")
        self._device_to_base = rotation
        self._deadband = settings.deadband
        self._gripper_was_down = False

    def _shaped(self, axes: FloatArray) -> FloatArray:
        magnitude = np.clip(np.abs(axes), 0.0, 1.0)
        if self._deadband >= 1.0:
            return np.zeros_like(axes)
        scaled = np.maximum(magnitude - self._deadband, 0.0) / (1.0 - self._deadband)
        return np.sign(axes) * scaled

    def map(self, reading: SpaceMouseReading) -> HumanInput:
        """The input for one control tick from the newest reading."""
        shaped = self._shaped(np.asarray(reading.axes, dtype=np.float64))
        gripper_down = len(reading.buttons) > GRIPPER_BUTTON and reading.buttons[GRIPPER_BUTTON]
        toggle = gripper_down and not self._gripper_was_down
        self._gripper_was_down = gripper_down
        if not (np.any(shaped != 0.0) or any(reading.buttons)):
            return IDLE
        return HumanInput(
            active=True,
            translation=_vector(self._device_to_base @ shaped[:3] * self._translation_step),
            rotation=_vector(self._device_to_base @ shaped[3:] * self._rotation_step),
            toggle_gripper=toggle,
        )


def takeover_closure(measured_closure: float, grasped: bool) -> float:
    """The gripper target the human starts from: where the gripper is.

    A gripper that holds an object stopped short of closed; asking for its measured closure could
    loosen the grasp, so a grasp starts from fully closed.
    """
    if grasped:
        return 1.0
    return min(max(float(measured_closure), 0.0), 1.0)


class TeleopSession:
    """The human's control of one arm: when they take over, and the gripper closure they hold.

    The human takes over on the first active tick, holding the gripper where it is; the gripper
    then changes only when they toggle it (to closed from below half closure, else to open). The
    hold ends when the input goes idle, and the next takeover starts again from the measured closure.
    """

    def __init__(self) -> None:
        self._gripper: float | None = None

    @property
    def engaged(self) -> bool:
        """The human acted in the last tick."""
        return self._gripper is not None

    def step(self, human: HumanInput, measured_closure: float, grasped: bool) -> TeleopCommand | None:
        """The command for this tick, or None while the human is not acting."""
        if not human.active:
            self._gripper = None
            return None
        if self._gripper is None:
            self._gripper = takeover_closure(measured_closure, grasped)
        if human.toggle_gripper:
            self._gripper = 0.0 if self._gripper >= 0.5 else 1.0
        return TeleopCommand(human.translation, human.rotation, self._gripper)
