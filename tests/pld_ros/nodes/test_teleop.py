"""The teleop node as a real process, seen over DDS: the human's steps on <arm>/teleop.

No SpaceMouse exists on this machine: the node runs with device "sim", the scripted SpaceMouse
twin (pld_ros.drivers.spacemouse.SIM_SCRIPT). The keyboard is real: the node's standard input is
a pseudo-terminal the test types on. The test plays the arm driver's part by publishing
<arm>/state itself.
"""

from __future__ import annotations

import math
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from std_msgs.msg import Header

from pld_msgs.msg import ActionSource, DeltaPoseCommand, RobotState
from pld_ros.graph import HEARTBEAT_TOPIC
from pld_ros.profile import load_profile
from tests.conftest import FIXTURES
from tests.processes import Watched
from tests.ros_probe import RosProbe

pytestmark = pytest.mark.ros

PROFILE = FIXTURES / "profiles" / "franka_arm_sim.yaml"
NODE = (sys.executable, "-m", "pld_ros.nodes.teleop", "--ros-args", "-p", f"profile:={PROFILE}", "-p")
SETTINGS = load_profile(PROFILE).teleop
RATE = load_profile(PROFILE).supervisor.control_rate
FRAME = "fr3_link0"


class Probe(RosProbe):
    """Plays the arm (publishes /arm/state at the control rate) and records /arm/teleop."""

    def __init__(self, closure: float) -> None:
        super().__init__("teleop_probe")
        self.commands: list[Any] = []
        self.arrivals: list[float] = []
        self.beats: set[str] = set()
        self.node.create_subscription(DeltaPoseCommand, "/arm/teleop", self._on_command, 50)
        self.node.create_subscription(Header, HEARTBEAT_TOPIC, lambda m: self.beats.add(m.frame_id), 10)
        self._states = self.node.create_publisher(RobotState, "/arm/state", 10)
        self.closure = closure
        self.arm_on = False
        self.node.create_timer(1.0 / RATE, self._publish_state)

    def _on_command(self, message: Any) -> None:
        self.commands.append(message)
        self.arrivals.append(time.monotonic())

    def _publish_state(self) -> None:
        if self.arm_on:
            state = RobotState(mode=RobotState.MODE_MOVING, gripper_closure=self.closure)
            state.header.frame_id = FRAME
            self._states.publish(state)

    def quiet_for(self, seconds: float, timeout: float) -> None:
        """Spin until no command has arrived for ``seconds``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            last = self.arrivals[-1] if self.arrivals else 0.0
            if time.monotonic() - last >= seconds:
                return
            self.spin_for(0.05)
        raise AssertionError(f"commands kept coming for {timeout} s")


@pytest.fixture
def probe() -> Iterator[Probe]:
    with Probe(closure=0.3) as p:
        yield p


def stamp(message: Any) -> float:
    return float(message.header.stamp.sec) + 1e-9 * float(message.header.stamp.nanosec)


def test_spacemouse_twin_publishes_human_steps_at_the_control_rate_then_stops(probe: Probe) -> None:
    node = Watched([*NODE, "device:=sim"])
    try:
        probe.spin_until(lambda: "/teleop" in probe.beats, 30, f"the node's heartbeat:\n{node.output}")
        # Without the arm's state there is no gripper to hold: nothing is published.
        probe.spin_for(0.5)
        assert probe.commands == []

        probe.arm_on = True
        probe.spin_until(lambda: bool(probe.commands), 10, f"a teleop command:\n{node.output}")
        probe.quiet_for(1.0, timeout=10)
        commands = probe.commands
        assert len(commands) == 20, "one command per active scripted reading"

        assert all(c.source.value == ActionSource.HUMAN for c in commands)
        assert all(c.header.frame_id == FRAME and math.isnan(c.base_action_age) for c in commands)
        shaped = (0.8 - SETTINGS.deadband) / (1.0 - SETTINGS.deadband)
        step = SETTINGS.translation_speed / RATE * shaped
        for c in commands:
            assert c.translation.x == pytest.approx(step, rel=1e-6)
            assert (c.translation.y, c.translation.z, c.rotation.x, c.rotation.y, c.rotation.z) == (0,) * 5
        # The gripper is held where the arm measured it, until the button toggles it closed.
        grippers = [round(float(c.gripper), 4) for c in commands]
        assert grippers == [0.3] * 10 + [1.0] * 10

        periods = np.diff([stamp(c) for c in commands])
        assert np.median(periods) == pytest.approx(1.0 / RATE, rel=0.2)
        assert stamp(commands[-1]) - stamp(commands[0]) == pytest.approx(19 / RATE, rel=0.3)
        node.wait_for("human took over")
        node.wait_for("human let go")
    finally:
        node.kill()


def test_keyboard_on_a_terminal_moves_while_keys_come_and_restores_it(probe: Probe) -> None:
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    process = subprocess.Popen([*NODE, "device:=keyboard"], stdin=slave, stdout=slave, stderr=slave)
    output = bytearray()

    def drain() -> str:
        while select.select([master], [], [], 0.0)[0]:
            output.extend(os.read(master, 4096))
        return output.decode(errors="replace")

    try:
        probe.arm_on = True
        probe.spin_until(lambda: "human can take over" in drain(), 30, f"the node to start:\n{drain()}")
        assert "w/s  forward/back" in drain(), "the key map is printed"
        # Hold "a" (left) for 0.5 s as terminal auto-repeat would send it, then let go.
        for _ in range(15):
            os.write(master, b"a")
            probe.spin_for(1.0 / 30.0)
        probe.quiet_for(0.5, timeout=5)
        assert len(probe.commands) >= 8, drain()
        step = SETTINGS.translation_speed / RATE
        assert all(c.translation.y == pytest.approx(step, rel=1e-6) for c in probe.commands)
        assert all(c.source.value == ActionSource.HUMAN for c in probe.commands)
        # Active for hold_time after the last key, not longer.
        span = probe.arrivals[-1] - probe.arrivals[0]
        assert span < 0.5 + SETTINGS.hold_time + 0.3
        assert {round(float(c.gripper), 4) for c in probe.commands} == {0.3}

        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(timeout=15) == 0, drain()
        assert termios.tcgetattr(slave) == before, "the terminal is restored"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
        os.close(slave)


def test_an_unknown_device_is_a_configuration_error() -> None:
    node = Watched([*NODE, "device:=trackball"])
    try:
        assert node.wait_exit(30) == 2
        assert "parameter 'device' must be one of keyboard, spacemouse, sim" in node.output
    finally:
        node.kill()


def test_keyboard_without_a_terminal_is_a_configuration_error() -> None:
    node = subprocess.run(
        [*NODE, "device:=keyboard"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
    )
    assert node.returncode == 2
    assert "run `pld teleop` in a terminal" in node.stdout + node.stderr
