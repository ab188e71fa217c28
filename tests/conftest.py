"""Shared fixtures: the repository layout and an isolated ROS 2 domain for tests that use DDS."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

# The first import of mujoco fixes its rendering backend for the process; tests that render need
# EGL (headless, CPU) whichever test module happens to import mujoco first.
os.environ.setdefault("MUJOCO_GL", "egl")

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "config"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session", autouse=True)
def ros_domain() -> Iterator[int]:
    """A DDS domain of this test session's own, on loopback only.

    Parallel test runs (and anything else on the machine) must not see each other's topics.
    Child processes inherit it through the environment.
    """
    domain = random.Random(os.getpid()).randrange(1, 100)
    saved = {k: os.environ.get(k) for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")}
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    yield domain
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def normal_scheduling() -> Iterator[None]:
    """Give each test the scheduling it started with.

    libfranka raises the thread that connects to a robot to SCHED_FIFO 99 when it may (root, or
    an rtprio limit), even with RealtimeConfig.Ignore. Left in place, it would change the timing
    of every later test and of every process they start.
    """
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    yield
    os.sched_setscheduler(0, policy, param)
