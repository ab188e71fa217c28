"""Single key presses from a terminal, as they are typed, without blocking.

The terminal is switched to cbreak mode (no line buffering, no echo) for as long as the reader is
open, and restored on exit, whatever the exit. Signals stay on, so Ctrl-C still interrupts.
Terminals send key presses only, never releases (see :class:`pld_ros.core.teleop.KeyboardMapping`).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import select
import sys
import termios
from typing import Any, Final

from typing_extensions import Self

# Keys without a character of their own (arrows, function keys, Alt+key) arrive as escape
# sequences: CSI (ESC [ params final), SS3 (ESC O x), or ESC and one character. They are dropped
# whole, so that e.g. the "A" of an arrow key (ESC [ A) cannot pass for the letter a.
_ESCAPE: Final = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|O.|[^\[O])", re.DOTALL)
_PARTIAL_ESCAPE: Final = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|O)?\Z")
_READ_SIZE: Final = 1024


class NotATerminalError(RuntimeError):
    """The keyboard reader was given something that is not an interactive terminal."""


class KeyboardReader:
    """Reads key presses from the terminal on ``fd`` (standard input by default).

    Use as a context manager: entering switches the terminal to cbreak mode, leaving restores it.
    """

    def __init__(self, fd: int | None = None) -> None:
        self.fd = sys.stdin.fileno() if fd is None else fd
        self._saved: list[Any] | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""

    def __enter__(self) -> Self:
        if not os.isatty(self.fd):
            raise NotATerminalError(
                "keyboard teleop reads keys from an interactive terminal, but standard input is not one "
                "(a pipe, a file, or a process started by `pld launch`): run `pld teleop` in a terminal "
                "of its own, or use device 'spacemouse'"
            )
        self._saved = termios.tcgetattr(self.fd)
        attributes = termios.tcgetattr(self.fd)
        attributes[3] &= ~(termios.ICANON | termios.ECHO)  # lflag: per key, not per line; no echo
        # A read returns what is there at once, never waits for a key.
        attributes[6][termios.VMIN] = 0
        attributes[6][termios.VTIME] = 0
        termios.tcsetattr(self.fd, termios.TCSANOW, attributes)
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Restore the terminal as it was (idempotent)."""
        saved, self._saved = self._saved, None
        if saved is None:
            return
        with contextlib.suppress(termios.error):  # a terminal that hung up has nothing to restore
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)

    def discard_pending(self) -> None:
        """Drop keys typed but not read yet (they are stale)."""
        self._require_open()
        termios.tcflush(self.fd, termios.TCIFLUSH)
        self._pending = ""

    def read_keys(self) -> list[str]:
        """Every key typed since the last call, oldest first; [] when none.

        Raises EOFError when the terminal has gone (hung up or closed).
        """
        self._require_open()
        chunks: list[bytes] = []
        while select.select([self.fd], [], [], 0.0)[0]:
            try:
                chunk = os.read(self.fd, _READ_SIZE)
            except OSError as exc:  # EIO: the terminal hung up
                raise EOFError(f"the terminal is gone: {exc.strerror}") from None
            if not chunk:
                raise EOFError("the terminal is gone (end of input)")
            chunks.append(chunk)
            if len(chunk) < _READ_SIZE:
                break
        text = self._pending + self._decoder.decode(b"".join(chunks))
        # An escape sequence split across two reads is completed by the next one.
        partial = _PARTIAL_ESCAPE.search(text)
        self._pending = text[partial.start() :] if partial else ""
        if partial:
            text = text[: partial.start()]
        return list(_ESCAPE.sub("", text))

    def _require_open(self) -> None:
        if self._saved is None:
            raise RuntimeError("the keyboard reader is not open (use it as a context manager)")
