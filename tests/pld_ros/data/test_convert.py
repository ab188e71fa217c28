"""Conversion of episode streams into datasets: filtering, progress, and broken inputs reported while
the rest is converted (real files)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pld_ros.data import lerobot_dataset
from pld_ros.data.convert import PendingEpisode, convert
from pld_ros.data.hdf5_dataset import Hdf5Reader
from pld_ros.data.lerobot_dataset import LeRobotReader
from pld_ros.data.sft_episode import SftEpisode
from tests.pld_ros.data.synthetic import FPS, episode


def mismatched() -> SftEpisode:
    """What a broken source produces: 8 timestamps for 7 actions."""
    good = episode(9, frames_count=8)
    return replace(good, action=good.action[:7])


def test_filter_success_keeps_only_the_successes(tmp_path: Path) -> None:
    episodes = [episode(i, frames_count=5 + i, success=i % 2 == 0) for i in range(5)]
    progress = io.StringIO()
    report = convert(episodes, tmp_path / "ds", "lerobot", FPS, filter_success=True, progress=progress)
    assert (report.episodes, report.filtered, report.problems) == (3, 2, [])
    assert report.frames == 5 + 7 + 9 and report.output == tmp_path / "ds"
    reader = LeRobotReader(tmp_path / "ds")
    assert [reader.episode(i).info.episode_id for i in range(len(reader))] == [100, 102, 104]
    assert all(reader.episode(i).success for i in range(len(reader)))
    lines = progress.getvalue().splitlines()
    assert lines and lines[-1].startswith("convert [####################] 5/5: 3 written, 21 frames")


def test_a_broken_episode_is_reported_and_the_others_converted(tmp_path: Path) -> None:
    inputs: list[SftEpisode | PendingEpisode] = [
        episode(0, frames_count=6),
        PendingEpisode("bag_1.mcap", mismatched),
        episode(2, frames_count=7, cameras={"wrist": (64, 64)}),  # a camera missing
        PendingEpisode("bag_3.mcap", lambda: episode(3, frames_count=5)),
        replace(episode(4, frames_count=6), timestamps=1.0 + np.arange(6) / 10.0),  # 10 Hz, not 20
    ]
    report = convert(inputs, tmp_path / "demos.hdf5", "hdf5", FPS, progress=None)
    assert (report.episodes, report.frames) == (2, 11)
    problems = {p.position: p for p in report.problems}
    assert sorted(problems) == [1, 2, 4]
    assert problems[1].name == "bag_1.mcap"
    assert problems[1].error.startswith("ValueError: action: expected float32 (8, N) for 8 timestamps")
    assert problems[2].name == "fr3/102" and "cameras" in problems[2].error
    assert "expected 50.0 ms at 20 fps" in problems[4].error
    assert "#1 bag_1.mcap: ValueError: action" in report.summary()
    with Hdf5Reader(tmp_path / "demos.hdf5") as reader:
        assert [reader.episode(i).info.episode_id for i in range(len(reader))] == [100, 103]


def test_a_failing_input_keeps_what_came_before(tmp_path: Path) -> None:
    def source() -> Iterator[SftEpisode]:
        yield episode(0, frames_count=4)
        yield episode(1, frames_count=4)
        raise OSError("bag directory vanished")

    report = convert(source(), tmp_path / "ds", "lerobot", FPS, progress=None)
    assert report.episodes == 2 and len(LeRobotReader(tmp_path / "ds")) == 2
    assert [(p.position, p.name) for p in report.problems] == [(2, "input")]
    assert report.problems[0].error == "reading stopped: OSError: bag directory vanished"


def test_nothing_to_convert_leaves_nothing(tmp_path: Path) -> None:
    report = convert([episode(0, success=False)], tmp_path / "ds", "lerobot", FPS, True, progress=None)
    assert report.output is None and report.filtered == 1
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="unknown dataset format 'rlds'"):
        convert([], tmp_path / "x", "rlds", FPS)  # type: ignore[arg-type]


def test_a_failing_output_stops_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk cannot be had here: the video writer's second call raises what it would."""
    calls: list[int] = []
    write = lerobot_dataset._VideoFiles.write

    def full_disk(self: lerobot_dataset._VideoFiles, images: np.ndarray) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        write(self, images)

    monkeypatch.setattr(lerobot_dataset._VideoFiles, "write", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        convert(
            [episode(i, frames_count=4) for i in range(3)], tmp_path / "ds", "lerobot", FPS, progress=None
        )
    assert list(tmp_path.iterdir()) == []


def test_a_broken_writer_is_discarded_on_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As above, with the writer used directly: closing it after the error finishes nothing."""

    def failing(*_: object) -> None:
        raise OSError("EIO")

    monkeypatch.setattr(lerobot_dataset._VideoFiles, "write", failing)
    writer = lerobot_dataset.LeRobotWriter(tmp_path / "ds", FPS)
    with pytest.raises(OSError, match="EIO"):
        writer.add(episode(0, frames_count=4))
    with pytest.raises(RuntimeError, match="broken by an earlier error"):
        writer.add(episode(1, frames_count=4))
    with pytest.raises(RuntimeError, match="broke the dataset; discarded"):
        writer.close()
    assert list(tmp_path.iterdir()) == []
