"""Append-only JSON-lines logs that survive a killed writer.

Each line is one JSON object, written whole, flushed and fsync'd before :meth:`JsonLines.append`
returns, so a process killed (or a machine losing power) loses no line that was appended. A kill
in the middle of a write leaves at most a torn last line: opening the log again drops it, so the
next line starts on a line of its own, and :func:`read_json_lines` skips it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class JsonLines:
    """Appends JSON objects to ``path``, one per line, creating its directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with path.open("r+b") as file:
                    file.truncate(data.rfind(b"\n") + 1)

    def append(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` as one line; NaN and infinities (not JSON) are written as null."""
        line = json.dumps(_finite(record), sort_keys=True, allow_nan=False) + "\n"
        with self.path.open("a", encoding="utf-8") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())


def _finite(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in record.items()
    }


def read_json_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The objects of a JSON-lines log, each with its line number (for the caller's errors).

    A line that does not parse is skipped only when it is the last one (a write torn by a kill);
    anywhere else the file is damaged, and a ValueError names the file and the line.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
        except ValueError as exc:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON object: {exc}") from None
        records.append((number, record))
    return records


def read_records(path: Path, parse: Callable[[dict[str, Any]], T], what: str) -> list[T]:
    """The records of a JSON-lines log, each object turned into one by ``parse``
    (:func:`read_json_lines` for the torn last line); a ValueError names the file and line of an
    object ``parse`` refuses, as ``not <what>``."""
    records = []
    for number, data in read_json_lines(path):
        try:
            records.append(parse(data))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: not {what}: {exc}") from None
    return records
