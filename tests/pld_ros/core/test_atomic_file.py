from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

import pytest

from pld_ros.core.atomic_file import atomic_write, is_temporary, remove_temporaries


def test_a_write_creates_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = atomic_write(tmp_path / "new" / "data.bin", lambda out: out.write(b"payload"))
    assert path.read_bytes() == b"payload"
    assert os.listdir(path.parent) == ["data.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    path = atomic_write(tmp_path / "data.bin", lambda out: out.write(b"old"))

    def interrupted(out: BinaryIO) -> None:
        out.write(b"half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["data.bin"]


def test_the_data_is_on_disk_before_the_rename_and_the_rename_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync directory" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def replace(source: str, target: Path) -> None:
        events.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write(tmp_path / "data.bin", lambda out: out.write(b"x"))
    assert events == ["fsync file", "rename", "fsync directory"]


def test_only_temporaries_are_removed(tmp_path: Path) -> None:
    leftover = tmp_path / ".episode.npz.k2j4.tmp"
    keep = [tmp_path / "episode.npz", tmp_path / ".writer.lock", tmp_path / "notes.tmp"]
    for path in [leftover, *keep]:
        path.write_bytes(b"x")
    assert is_temporary(leftover) and not any(is_temporary(p) for p in keep)
    assert remove_temporaries(tmp_path) == [leftover]
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert remove_temporaries(tmp_path / "absent") == []


def test_the_file_gets_the_mode_a_plain_open_would_give(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    written = atomic_write(tmp_path / "atomic", lambda out: out.write(b"x"))
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
