"""JSON-lines logs: durable appends, a torn last line dropped on reopening, damage reported."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pld_ros.core.json_lines import JsonLines, read_json_lines


def test_appends_survive_a_torn_write_and_a_reopened_log_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "metrics.jsonl"
    log = JsonLines(path)
    log.append({"updates": 1, "loss": 0.5})
    log.append({"updates": 2, "loss": math.nan, "q": math.inf})
    with path.open("a") as file:
        file.write('{"updates": 3, "lo')  # a writer killed mid-line
    assert read_json_lines(path) == [
        (1, {"updates": 1, "loss": 0.5}),
        (2, {"updates": 2, "loss": None, "q": None}),
    ]
    JsonLines(path).append({"updates": 3})  # a restarted writer
    assert [r["updates"] for _, r in read_json_lines(path)] == [1, 2, 3]
    assert path.read_text().endswith('{"updates": 3}\n')


def test_a_damaged_line_inside_the_log_is_named(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON object"):
        read_json_lines(path)
    path.write_text('{"a": 1}\n[1, 2]\n{"a": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: .*list"):
        read_json_lines(path)
