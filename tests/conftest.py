"""Shared fixtures: the repository layout and an isolated ROS 2 domain for tests that use DDS."""

from __future__ import annotations

import faulthandler
import gc
import os
import random
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

# The first import of mujoco fixes its rendering backend for the process; tests that render need
# EGL (headless, CPU) whichever test module happens to import mujoco first.
os.environ.setdefault("MUJOCO_GL", "egl")

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "config"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

HANG_LIMIT = 900.0
"""s one test may take, fixtures included, before the session is ended (the longest timeout a
test sets is 600 s)."""
_hang_report_fd = -1


def pytest_configure(config: pytest.Config) -> None:
    # Output capture is suspended while plugins are configured: this is the terminal's stderr.
    global _hang_report_fd
    _hang_report_fd = os.dup(2)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """End a hung session with every thread's traceback, rather than leave CI waiting.

    pytest-timeout interrupts a test from Python, which a thread stuck in C++ while holding the
    GIL never lets run (a franky Robot destructor did that in a module fixture's teardown);
    faulthandler's watchdog is C and needs no GIL. The protocol covers setup, call and teardown,
    module fixtures' teardown included.
    """
    faulthandler.dump_traceback_later(HANG_LIMIT, exit=True, file=_hang_report_fd)
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()


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


@pytest.fixture(scope="module")
def frozen_heap() -> Iterator[None]:
    """For modules that run franky-sim inside the test process (FrankaPickCubeWorld).

    Its physics loop is Python, so it stops whenever the garbage collector holds the GIL. Late in
    the suite the test process holds millions of objects and a full collection takes long enough
    for the simulated arm's commanded velocities to jump: franky's planner then fails ("Motion
    planner failed with error code -111", reproduced by keeping 3 million dicts alive). Freezing
    what is alive now keeps those objects out of every later collection.
    """
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()
