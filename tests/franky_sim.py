"""franky-sim as a separate process, so tests can kill it like a robot that drops off the network."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.processes import Watched


def franky_sim_command(host: str) -> list[str]:
    exe = shutil.which("franky-sim") or str(Path(sys.executable).parent / "franky-sim")
    return [exe, "--simulator", "mujoco", "--hostname", host]


def start_franky_sim(host: str, timeout: float = 60.0) -> Watched:
    """Start the libfranka-protocol simulator bound to ``host`` and wait until it accepts clients."""
    sim = Watched(franky_sim_command(host))
    try:
        sim.wait_for(rf"Connect to the server using '{host}'", timeout=timeout)
    except AssertionError:
        sim.kill()
        raise
    return sim
