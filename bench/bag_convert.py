"""Bag conversion speed end to end: recorded bags with two 640x480 cameras at 30 Hz and the arm's
state, base actions and commands at 20 Hz become a LeRobot v3.0 dataset (AV1 video, parquet) and a
robomimic-style HDF5 file, through the converter's path (:class:`pld_ros.data.bag_episodes.BagEpisodes`
into :func:`pld_ros.data.convert.convert`, what ``pld dataset convert`` runs).

The bags are written first (not timed into the conversion) as the recorder writes them, one per
episode, zstd chunks (:mod:`tests.pld_ros.data.synthetic_bags`), with camera-like images (a textured
background, moving objects, sensor noise; :func:`bench.dataset_convert.camera_images`) as the cameras'
``policy_view``. Reports the time :class:`~pld_ros.data.bags.BagReader` takes to open (index) the
bags, as closed (from their MCAP summary) and as a killed recorder leaves them (copies cut where the
summary starts: scanned); frames per second (a frame is one control tick: two camera images, state
and actions) and per CPU-second of this process (all threads), first for reading the bags alone
(opening, decompressing, deserializing, aligning: the episodes are built and dropped), as closed and
as cut, then for each format end to end; and the bags' and datasets' bytes per frame.

    scripts/in_env.sh python -m bench.bag_convert --episodes 3

(run from the repository root, as a module: it uses the tests' bag writer).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.dataset_convert import camera_images, directory_size
from pld_ros.data.bag_episodes import BagEpisodes
from pld_ros.data.bags import BagReader, BagWarning
from pld_ros.data.convert import convert
from pld_ros.data.sft_episode import SftEpisode
from tests.pld_ros.data.synthetic_bags import FRAME_NS, TICK_NS, Run, record
from tests.pld_ros.data.test_bags import summary_start

FPS = 20


def episodes(bags: list[Path]) -> Iterator[SftEpisode]:
    for bag in bags:
        yield from BagEpisodes(bag, fps=FPS)


def without_summary(bag: Path, out: Path) -> Path:
    """A copy of ``bag`` as a killed recorder leaves it: the MCAP file up to its summary section,
    no ``metadata.yaml``."""
    out.mkdir(parents=True)
    (mcap,) = bag.glob("*.mcap")
    data = mcap.read_bytes()
    (out / mcap.name).write_bytes(data[: summary_start(data)])
    return out


def reading(bags: list[Path]) -> tuple[int, float, float]:
    """Frames read from ``bags`` (the episodes built and dropped), wall seconds, CPU seconds."""
    cpu, started = time.process_time(), time.perf_counter()
    frames = sum(len(episode) for episode in episodes(bags))
    return frames, time.perf_counter() - started, time.process_time() - cpu


def opening_seconds(bags: list[Path]) -> float:
    """Seconds to open every bag with :class:`BagReader` (its index pass), median of three rounds."""
    rounds = []
    for _ in range(3):
        started = time.perf_counter()
        for bag in bags:
            BagReader(bag)
        rounds.append(time.perf_counter() - started)
    return sorted(rounds)[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=3, help="episodes (one bag each)")
    parser.add_argument("--ticks", type=int, default=200, help="control ticks per episode (10 s at 20 Hz)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--noise", type=float, default=2.0, help="sensor noise, grey levels (sigma)")
    parser.add_argument("--formats", nargs="+", default=["lerobot", "hdf5"], choices=["lerobot", "hdf5"])
    parser.add_argument("--out", type=Path, help="where to write (default: a temporary directory, removed)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    size = (args.height, args.width)
    # Enough distinct frames for one episode's span at 30 Hz; the episodes reuse them.
    count = (args.ticks + 10) * TICK_NS // FRAME_NS + 10
    started = time.perf_counter()
    images = {name: camera_images(count, *size, args.noise, rng) for name in ("wrist", "side")}

    def image(camera: str, j: int, _: tuple[int, int]) -> npt.NDArray[np.uint8]:
        frame: npt.NDArray[np.uint8] = images[camera][j % count]
        return frame

    made = time.perf_counter() - started
    work = Path(tempfile.mkdtemp(prefix="bag_convert.")) if args.out is None else args.out
    try:
        started = time.perf_counter()
        sizes = dict.fromkeys(images, size)
        bags = [
            record(work / "bags", [Run(index, ticks=args.ticks)], image=image, sizes=sizes)[0][0]
            for index in range(args.episodes)
        ]
        written = time.perf_counter() - started
        frames_total = args.episodes * args.ticks
        bag_bytes = sum(directory_size(bag) for bag in bags)
        print(
            f"{args.episodes} episode bags x {args.ticks} ticks, cameras wrist and side at "
            f"{args.width}x{args.height} 30 Hz: {bag_bytes / frames_total / 1e3:.0f} kB per tick in the bags "
            f"(images made in {made:.1f} s, bags written in {written:.1f} s)"
        )
        cut = [without_summary(bag, work / "cut" / bag.name) for bag in bags]
        with warnings.catch_warnings():
            warnings.simplefilter("error", BagWarning)  # the bags are whole: any warning is a bug
            closed = opening_seconds(bags)
            closed_reading = reading(bags)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BagWarning)  # the cut copies warn that they are cut
            scanned = opening_seconds(cut)
            scanned_reading = reading(cut)
        print(
            f"opening the bags (BagReader's index): {closed:.3f} s as closed, {scanned:.3f} s without "
            f"their summary (a killed recorder's); {frames_total / closed:.0f} and "
            f"{frames_total / scanned:.0f} ticks/s"
        )
        for what, (frames, seconds, cpu) in (
            ("reading the bags", closed_reading),
            ("reading them without their summary (scanned)", scanned_reading),
        ):
            print(
                f"{what}: {frames} frames in {seconds:.1f} s = {frames / seconds:.1f} frames/s "
                f"({frames / cpu:.1f} frames per CPU-second)"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("error", BagWarning)
            for format in args.formats:
                out = work / ("dataset" if format == "lerobot" else "dataset.hdf5")
                cpu = time.process_time()
                report = convert(episodes(bags), out, format, FPS, progress=None)
                cpu = time.process_time() - cpu
                if report.problems or report.frames != frames_total:
                    raise SystemExit(report.summary())
                rate = report.frames_per_second
                print(
                    f"{format}, bags to dataset: {report.frames} frames in {report.seconds:.1f} s = "
                    f"{rate:.1f} frames/s ({2 * rate:.0f} camera images/s; {report.frames / cpu:.1f} frames "
                    f"per CPU-second, all threads); {directory_size(out) / report.frames / 1e3:.1f} kB/frame"
                )
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
