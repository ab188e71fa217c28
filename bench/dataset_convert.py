"""Dataset conversion speed: synthetic episodes with two 640x480 cameras at 20 Hz, converted to a
LeRobot v3.0 dataset (AV1 video through SVT-AV1, parquet) and to a robomimic-style HDF5 file
(uncompressed images), through :func:`pld_ros.data.convert.convert`.

Reports frames per second (a frame is one control tick: two camera images, state and actions), and
per CPU-second of this process (all its threads; less sensitive to other load on a shared machine),
the size of the output per frame, and how fast one episode reads back (decoding the videos).

The camera images look like a camera's: a static shaded and textured background, a few coloured
objects that move, and sensor noise (sigma ``--noise`` grey levels); texture and noise are what make
real video expensive to encode. One set of images is made up front and shared by all episodes
(their making is not timed); the encoders keep nothing from one episode to the next.

    scripts/in_env.sh python bench/dataset_convert.py --episodes 10
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pld_ros.data.convert import convert
from pld_ros.data.hdf5_dataset import Hdf5Reader
from pld_ros.data.lerobot_dataset import LeRobotReader
from pld_ros.data.sft_episode import ACTION_NAMES, STATE_NAMES, EpisodeInfo, Origin, SftEpisode

FPS = 20


def camera_images(
    count: int, height: int, width: int, noise: float, rng: np.random.Generator
) -> npt.NDArray[np.uint8]:
    """``[count, height, width, 3]`` camera-like images (module doc)."""
    y, x = np.mgrid[0:height, 0:width]
    shading = [60 + 80 * x / width, 70 + 60 * y / height, 90 + 30 * (x + y) / (width + height)]
    # A table-like texture: random 8x8-pixel patches, smoothed over neighbouring patches.
    coarse = rng.uniform(-25.0, 25.0, (height // 8 + 2, width // 8 + 2, 3))
    coarse = (coarse[:-2, :-2] + coarse[1:-1, 1:-1] + coarse[2:, 2:] + coarse[2:, :-2] + coarse[:-2, 2:]) / 5
    texture = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height, :width]
    background = np.stack(shading, -1) + texture
    objects = [
        (rng.uniform(0, width), rng.uniform(0, height), rng.uniform(-4, 4), rng.uniform(-3, 3))
        for _ in range(3)
    ]
    colours = rng.uniform(30, 230, (len(objects), 3))
    out = np.empty((count, height, width, 3), dtype=np.uint8)
    for t in range(count):
        image = background.copy()
        for (x0, y0, vx, vy), colour in zip(objects, colours, strict=True):
            cx, cy = (x0 + vx * t) % width, (y0 + vy * t) % height
            inside = (np.abs(x - cx) < width / 12) & (np.abs(y - cy) < height / 10)
            image[inside] = colour
        image += rng.normal(0.0, noise, image.shape)
        out[t] = np.clip(image, 0, 255).astype(np.uint8)
    return out


def episodes(count: int, frames: int, cameras: dict[str, npt.NDArray[np.uint8]]) -> list[SftEpisode]:
    rng = np.random.default_rng(1)
    out = []
    for index in range(count):
        base = rng.uniform(-0.01, 0.01, (frames, len(ACTION_NAMES))).astype(np.float32)
        action = base + rng.uniform(-0.002, 0.002, base.shape).astype(np.float32)
        out.append(
            SftEpisode(
                task="pick up the cube",
                cameras=cameras,
                state=rng.normal(size=(frames, len(STATE_NAMES))).astype(np.float32),
                action=action,
                base_action=base,
                residual=action - base,
                timestamps=100.0 * index + np.arange(frames, dtype=np.float64) / FPS,
                success=True,
                info=EpisodeInfo("fr3", Origin.PLD, index),
                state_names=STATE_NAMES,
                action_names=ACTION_NAMES,
            )
        )
    return out


def directory_size(path: Path) -> int:
    return (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=10, help="episodes per format")
    parser.add_argument("--frames", type=int, default=200, help="frames per episode (10 s at 20 Hz)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--noise", type=float, default=2.0, help="sensor noise, grey levels (sigma)")
    parser.add_argument("--formats", nargs="+", default=["lerobot", "hdf5"], choices=["lerobot", "hdf5"])
    parser.add_argument("--out", type=Path, help="where to write (default: a temporary directory, removed)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    cameras = {
        name: camera_images(args.frames, args.height, args.width, args.noise, rng)
        for name in ("wrist", "side")
    }
    print(
        f"{args.episodes} episodes x {args.frames} frames, cameras {list(cameras)} at "
        f"{args.width}x{args.height}, {FPS} Hz (images made in {time.perf_counter() - started:.1f} s)"
    )
    work = Path(tempfile.mkdtemp(prefix="dataset_convert.")) if args.out is None else args.out
    try:
        for format in args.formats:
            out = work / ("dataset" if format == "lerobot" else "dataset.hdf5")
            cpu = time.process_time()
            report = convert(episodes(args.episodes, args.frames, cameras), out, format, FPS, progress=None)
            cpu = time.process_time() - cpu
            if report.problems:
                raise SystemExit(report.summary())
            size = directory_size(out)
            started = time.perf_counter()
            if format == "lerobot":
                LeRobotReader(out).episode(0)
            else:
                with Hdf5Reader(out) as reader:
                    reader.episode(0)
            read = time.perf_counter() - started
            rate = report.frames_per_second
            print(
                f"{format}: {report.frames} frames in {report.seconds:.1f} s = "
                f"{rate:.1f} frames/s ({2 * rate:.0f} camera images/s; {report.frames / cpu:.1f} frames per "
                f"CPU-second, all threads); "
                f"{size / report.frames / 1e3:.1f} kB/frame; "
                f"one episode reads back in {read:.2f} s ({args.frames / read:.0f} frames/s)"
            )
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
