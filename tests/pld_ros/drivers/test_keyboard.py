"""The keyboard reader on a real pseudo-terminal: keys typed on the master side are read one by one."""

from __future__ import annotations

import contextlib
import os
import pty
import termios
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pld_ros.drivers.keyboard import KeyboardReader, NotATerminalError


@pytest.fixture
def terminal() -> Iterator[tuple[int, int]]:
    """(master, slave) of a fresh pseudo-terminal; the test types on master, the reader reads slave."""
    master, slave = pty.openpty()
    yield master, slave
    for fd in (master, slave):
        with contextlib.suppress(OSError):  # a test may have closed it
            os.close(fd)


def read_until(reader: KeyboardReader, count: int, timeout: float = 2.0) -> list[str]:
    keys: list[str] = []
    end = time.monotonic() + timeout
    while len(keys) < count and time.monotonic() < end:
        keys += reader.read_keys()
        time.sleep(0.005)
    return keys


def test_reads_single_keys_without_enter_and_never_blocks(terminal: tuple[int, int]) -> None:
    master, slave = terminal
    with KeyboardReader(slave) as reader:
        started = time.monotonic()
        assert reader.read_keys() == []
        assert time.monotonic() - started < 0.05, "reading with nothing typed must not wait"
        os.write(master, b"w")
        assert read_until(reader, 1) == ["w"]
        os.write(master, b"ad q")
        assert read_until(reader, 4) == ["a", "d", " ", "q"]


def test_arrow_and_function_keys_are_dropped_whole(terminal: tuple[int, int]) -> None:
    master, slave = terminal
    with KeyboardReader(slave) as reader:
        # Up arrow (CSI), F1 (SS3), Alt+a, then a plain w.
        os.write(master, b"\x1b[A\x1bOP\x1baw")
        assert read_until(reader, 1) == ["w"]
        # A sequence split across two reads is still dropped whole.
        os.write(master, b"\x1b[")
        time.sleep(0.05)
        assert reader.read_keys() == []
        os.write(master, b"Bs")
        assert read_until(reader, 1) == ["s"]


def test_terminal_is_in_cbreak_mode_inside_and_restored_after(terminal: tuple[int, int]) -> None:
    slave = terminal[1]
    before = termios.tcgetattr(slave)
    assert before[3] & termios.ICANON
    inside: list[Any] = []

    def fail_inside() -> None:
        with KeyboardReader(slave):
            inside.extend(termios.tcgetattr(slave))
            raise KeyError("the terminal is restored even when the body fails")

    with pytest.raises(KeyError):
        fail_inside()
    assert not inside[3] & (termios.ICANON | termios.ECHO)
    assert inside[3] & termios.ISIG, "Ctrl-C must still interrupt"
    assert termios.tcgetattr(slave) == before


def test_discard_pending_drops_stale_keys(terminal: tuple[int, int]) -> None:
    master, slave = terminal
    with KeyboardReader(slave) as reader:
        os.write(master, b"wwww")
        time.sleep(0.05)
        reader.discard_pending()
        assert reader.read_keys() == []
        os.write(master, b"e")
        assert read_until(reader, 1) == ["e"]


def test_a_closed_terminal_is_end_of_input(terminal: tuple[int, int]) -> None:
    master, slave = terminal
    with KeyboardReader(slave) as reader:
        os.close(master)
        with pytest.raises(EOFError, match="terminal is gone"):
            reader.read_keys()


def test_standard_input_that_is_not_a_terminal_is_refused_clearly() -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(NotATerminalError, match=r"not one .*run `pld teleop` in a terminal"):
            KeyboardReader(read_end).__enter__()
    finally:
        os.close(read_end)
        os.close(write_end)


def test_reading_a_reader_that_is_not_open_fails(terminal: tuple[int, int]) -> None:
    with pytest.raises(RuntimeError, match="not open"):
        KeyboardReader(terminal[1]).read_keys()
