"""SpaceMouse input: the real device through pyspacemouse (hidapi), and a scripted twin.

Both give :class:`pld_ros.core.teleop.SpaceMouseReading` in the SpaceMouse frame the core
documents (pyspacemouse's ``AxisConvention.ROS``: x away from the user, y left, z up).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

from pld_ros.core.teleop import SPACEMOUSE_IDLE, SpaceMouseReading

_MAX_REPORTS_PER_READ: Final = 64
"""HID reports drained per read at most. The device sends reports (translation and rotation
separately) faster than the control rate; reading one per tick would fall ever further behind."""


class SpaceMouseError(RuntimeError):
    """No usable SpaceMouse: hidapi missing, no device, no permission, or the device went away."""


class SpaceMouse(Protocol):
    """What the teleop node needs from a SpaceMouse."""

    def open(self) -> None: ...

    def read(self) -> SpaceMouseReading:
        """The device's newest state (never waits for a new one)."""
        ...

    def close(self) -> None: ...


class PySpaceMouse:
    """The first connected SpaceMouse, read without blocking through pyspacemouse."""

    def __init__(self) -> None:
        self._device: Any = None
        self._name = ""

    def open(self) -> None:
        try:
            import pyspacemouse
        except (ImportError, OSError) as exc:
            raise SpaceMouseError(f"cannot load pyspacemouse (and hidapi): {exc}") from None
        try:
            connected = pyspacemouse.get_connected_devices()
        except RuntimeError:
            raise SpaceMouseError(
                "hidapi is not installed, so no SpaceMouse can be found: install the system "
                "library (Debian/Ubuntu: apt install libhidapi-hidraw0)"
            ) from None
        if not connected:
            raise SpaceMouseError(
                "no SpaceMouse connected: plug it in (a wireless one through its receiver); "
                "pyspacemouse lists the models it knows with get_supported_devices()"
            )
        self._name = connected[0]
        try:
            self._device = pyspacemouse.open(
                device=self._name, axis_convention=pyspacemouse.AxisConvention.ROS
            )
        except (RuntimeError, ValueError) as exc:
            raise SpaceMouseError(
                f"cannot open the {self._name}: {exc} (is /dev/hidraw* readable by this user? "
                "a udev rule for the 3Dconnexion vendor id grants it)"
            ) from None

    def read(self) -> SpaceMouseReading:
        if self._device is None:
            raise SpaceMouseError("the SpaceMouse is not open")
        try:
            state = self._device.read()
            for _ in range(_MAX_REPORTS_PER_READ):
                seen = state.t
                state = self._device.read()
                if state.t == seen:  # the timestamp changes only when a report was processed
                    break
        except Exception as exc:  # easyhid raises its own exception types from a dead device
            raise SpaceMouseError(f"reading the {self._name} failed: {exc}") from exc
        return SpaceMouseReading(
            axes=(state.x, state.y, state.z, state.roll, state.pitch, state.yaw),
            buttons=tuple(bool(b) for b in state.buttons),
        )

    def close(self) -> None:
        device, self._device = self._device, None
        if device is not None:
            device.close()


class ScriptedSpaceMouse:
    """A SpaceMouse twin that plays a fixed sequence, one reading per read, then rests.

    Stands in for the device where none is plugged in (tests, a demo of ``pld teleop`` in
    simulation).
    """

    def __init__(self, script: Sequence[SpaceMouseReading]) -> None:
        self._script = tuple(script)
        self._next = 0
        self._open = False

    def open(self) -> None:
        self._open = True

    def read(self) -> SpaceMouseReading:
        if not self._open:
            raise SpaceMouseError("the scripted SpaceMouse is not open")
        if self._next >= len(self._script):
            return SPACEMOUSE_IDLE
        reading = self._script[self._next]
        self._next += 1
        return reading

    def close(self) -> None:
        self._open = False


def script(segments: Iterable[tuple[int, SpaceMouseReading]]) -> tuple[SpaceMouseReading, ...]:
    """A script from (reads, reading) segments: each reading repeated that many reads."""
    return tuple(reading for count, reading in segments for _ in range(count))


_PUSH_FORWARD: Final = SpaceMouseReading(axes=(0.8, 0.0, 0.0, 0.0, 0.0, 0.0))
SIM_SCRIPT: Final = script(
    (
        (5, SPACEMOUSE_IDLE),
        (10, _PUSH_FORWARD),
        (3, SpaceMouseReading(axes=_PUSH_FORWARD.axes, buttons=(True, False))),
        (7, _PUSH_FORWARD),
    )
)
"""What the "sim" teleop device plays: rest for 5 reads, push the cap forward to 0.8 for 20
reads with the gripper button down in reads 16-18 (one toggle), then rest for good."""
