"""Convert episodes into an SFT dataset (LeRobot v3.0 or robomimic/LIBERO HDF5), episode by episode,
with progress and a per-episode error report.

The input is any iterable of :class:`~pld_ros.data.sft_episode.SftEpisode` s, or of
:class:`PendingEpisode` s for sources that may fail to produce one (a bag with missing topics or a
damaged chunk, arrays of mismatched lengths): such an episode is reported and skipped, and the
others are converted. So is an episode the dataset refuses (other cameras or sizes than the
first one, frames not at ``fps``). An error of the output itself (disk full, encoder failure)
stops the conversion and discards the partial dataset: the writers only ever leave a complete
dataset behind.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

from pld_ros.data.hdf5_dataset import Hdf5Writer
from pld_ros.data.lerobot_dataset import LeRobotWriter
from pld_ros.data.sft_episode import EpisodeRejected, SftEpisode

Format = Literal["lerobot", "hdf5"]

PROGRESS_INTERVAL = 1.0
"""s between progress lines (at most; and one after the last episode)."""


@dataclass(frozen=True)
class PendingEpisode:
    """An episode still to be produced: ``load()`` returns it, or raises (ValueError, OSError, ...)
    when its source is broken; ``name`` (e.g. the bag's path) identifies it in the report."""

    name: str
    load: Callable[[], SftEpisode]


@dataclass(frozen=True)
class Problem:
    """An input that was not converted, and why."""

    position: int
    """Its position in the input (0-based)."""
    name: str
    error: str


@dataclass
class ConversionReport:
    """What a conversion did."""

    output: Path | None = None
    """The dataset written; None when no episode was converted (nothing is left behind then)."""
    episodes: int = 0
    frames: int = 0
    filtered: int = 0
    """Episodes left out because they failed (``filter_success``)."""
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0.0 else 0.0

    def summary(self) -> str:
        """A few lines for a person: counts, speed, and every problem."""
        lines = [
            f"{self.episodes} episodes ({self.frames} frames) converted in {self.seconds:.1f} s "
            f"({self.frames_per_second:.1f} frames/s) to {self.output or 'nothing'}; "
            f"{self.filtered} filtered out, {len(self.problems)} not converted"
        ]
        lines += [f"  #{p.position} {p.name}: {p.error}" for p in self.problems]
        return "\n".join(lines)


class _Progress:
    """One line per :data:`PROGRESS_INTERVAL` at most: a bar when the total is known."""

    def __init__(self, out: TextIO | None, total: int | None) -> None:
        self.out, self.total = out, total
        self.start = time.monotonic()
        self.last = -PROGRESS_INTERVAL

    def update(self, done: int, report: ConversionReport, *, final: bool = False) -> None:
        now = time.monotonic()
        if self.out is None or (not final and now - self.last < PROGRESS_INTERVAL):
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        if self.total:
            filled = round(20 * done / self.total)
            head = f"[{'#' * filled}{'.' * (20 - filled)}] {done}/{self.total}"
        else:
            head = f"{done} episodes"
        print(
            f"convert {head}: {report.episodes} written, {report.frames} frames, "
            f"{report.frames / elapsed:.1f} frames/s, {len(report.problems)} problems",
            file=self.out,
            flush=True,
        )


def convert(
    episodes: Iterable[SftEpisode | PendingEpisode],
    out: Path,
    format: Format,
    fps: int,
    filter_success: bool = False,
    *,
    robot_type: str | None = None,
    progress: TextIO | None = sys.stderr,
) -> ConversionReport:
    """Write ``episodes`` to a new dataset at ``out`` (a directory for ``lerobot``, a file for
    ``hdf5``) with frames at ``fps``; with ``filter_success`` only successful episodes.

    Episodes that cannot be produced or that the dataset refuses are reported in the returned
    report's ``problems`` and skipped; so is an input iterator that fails (what it yielded before
    is kept). ``robot_type`` goes to LeRobot's info.json. Progress lines go to ``progress`` (None:
    quiet).
    """
    started = time.monotonic()
    report = ConversionReport()
    writer: LeRobotWriter | Hdf5Writer
    if format == "lerobot":
        writer = LeRobotWriter(out, fps, robot_type=robot_type)
    elif format == "hdf5":
        writer = Hdf5Writer(out, fps)
    else:
        raise ValueError(f"unknown dataset format {format!r} (lerobot or hdf5)")
    bar = _Progress(progress, len(episodes) if isinstance(episodes, Sized) else None)
    done = 0
    with writer:
        for position, item in _numbered(episodes, report):
            done = position + 1
            if isinstance(item, PendingEpisode):
                try:
                    episode = item.load()
                except Exception as exc:  # whatever a broken source raises, it is that episode's
                    report.problems.append(Problem(position, item.name, f"{type(exc).__name__}: {exc}"))
                    bar.update(done, report)
                    continue
            else:
                episode = item
            if filter_success and not episode.success:
                report.filtered += 1
            else:
                try:
                    writer.add(episode)
                except EpisodeRejected as exc:
                    name = item.name if isinstance(item, PendingEpisode) else _name(episode)
                    report.problems.append(Problem(position, name, str(exc)))
                else:
                    report.episodes += 1
                    report.frames += len(episode)
            bar.update(done, report)
        report.output = writer.close()
    report.seconds = time.monotonic() - started
    bar.update(done, report, final=True)
    return report


def _numbered(
    episodes: Iterable[SftEpisode | PendingEpisode], report: ConversionReport
) -> Iterator[tuple[int, SftEpisode | PendingEpisode]]:
    """The input with positions; an input that fails is reported and ends there."""
    iterator = iter(episodes)
    position = 0
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as exc:  # the source itself broke: keep what was converted before
            report.problems.append(
                Problem(position, "input", f"reading stopped: {type(exc).__name__}: {exc}")
            )
            return
        yield position, item
        position += 1


def _name(episode: SftEpisode) -> str:
    return f"{episode.info.robot_id}/{episode.info.episode_id}"
