"""SFT episodes as a LeRobot dataset (format v3.0), and back: written with pyarrow and PyAV, without
the lerobot package (which cannot share the project's environment).

The layout is the one LeRobot's own loader (``LeRobotDataset(repo_id, root=...)``) reads::

    meta/info.json                              schema, fps, path templates, totals
    meta/stats.json                             per-feature statistics over the whole dataset
    meta/tasks.parquet                          task text -> task_index
    meta/episodes/chunk-000/file-000.parquet    one row per episode: length, tasks, where its rows
                                                and video frames are, its statistics
    data/chunk-000/file-000.parquet             one row per frame, many episodes per file
    videos/observation.images.<camera>/chunk-000/file-000.mp4   many episodes per file

Frame rows hold ``observation.state``, ``action`` (executed), the base/residual split as
``base_action`` and ``residual`` (named so that LeRobot's policies, which take every feature whose
name starts with ``observation`` or ``action`` as an input or output, ignore them), ``stamp`` (the
frame's recorded time, s, on the recording's clock), and LeRobot's ``timestamp`` (s since the
episode's first frame, ``frame_index / fps``: LeRobot finds a row's video frame at
``from_timestamp + timestamp`` and checks that rows are ``1 / fps`` apart), ``frame_index``,
``episode_index``, ``index`` (over the dataset) and ``task_index``. Vectors are fixed-size lists.

Each camera's frames go, episode after episode, into one continuous video stream with frame ``k``
of the file at ``k / fps``; an episode's ``videos/<key>/from_timestamp`` is the time of its first
frame in the file, ``to_timestamp`` the end of its last. A file (parquet or mp4) is closed at an
episode boundary once it has reached its size limit (``data_files_size_in_mb``,
``video_files_size_in_mb``; SVT-AV1 emits a frame ~40 frames after taking it, so a video file
can overshoot by that much) and the next one takes the next file index (``chunks_size`` files per
chunk directory).

Video: AV1 through SVT-AV1 with LeRobot's defaults (``libsvtav1``, yuv420p, keyframe every 2 frames,
CRF 30, preset 12), recorded in each video feature's ``info``; :data:`H264` (libx264) where a PyAV
build lacks SVT-AV1. Measured on the 2-core development machine, 640x480 frames, a keyframe every 2:
SVT-AV1 encodes ~280 frames/s into 37 % of the bytes x264 ``veryfast`` needs for the same mean
error (x264: ~360 frames/s); encoding the two cameras in two threads gains nothing on 2 cores (the
encoder is multi-threaded already). Image statistics come from per-channel histograms, which cost
little next to the encoding.

Statistics (LeRobot's): per feature min, max, mean, std, count and the quantiles q01, q10, q50, q90,
q99, per value for vectors, per channel in [0, 1] and shaped ``(3, 1, 1)`` for videos (from up to
:data:`IMAGE_STATS_FRAMES` frames per episode, downsampled); the dataset's are aggregated from the
episodes' as LeRobot does (count-weighted means, pooled variance, quantiles as count-weighted means
of the episodes' quantiles).

The writer builds the dataset in a hidden directory beside ``root`` and renames it into place when
closed, so a dataset directory is complete or absent; an episode that does not fit the dataset is
refused whole (:class:`~pld_ros.data.sft_episode.EpisodeRejected`) before anything of it is written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from pld_ros.core.atomic_file import atomic_write, fsync_directory
from pld_ros.data.sft_episode import EpisodeInfo, EpisodeRejected, Layout, Origin, SftEpisode

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
"""Files per chunk directory (LeRobot's default)."""
DATA_FILE_SIZE_MB = 100
"""A data parquet file is closed once it holds this many MB of (uncompressed) rows (LeRobot's
default)."""
VIDEO_FILE_SIZE_MB = 200
"""A video file is closed once the encoder has put out this many MB into it (LeRobot's default)."""
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"

STATE = "observation.state"
ACTION = "action"
BASE_ACTION = "base_action"
RESIDUAL = "residual"
STAMP = "stamp"
CAMERA_PREFIX = "observation.images."
_INDICES = ("frame_index", "episode_index", "index", "task_index")

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
"""Quantiles in the statistics (LeRobot's; keys ``q01`` ... ``q99``)."""
IMAGE_STATS_FRAMES = 100
"""Frames per episode and camera, evenly spaced, that its image statistics are computed from."""
IMAGE_STATS_SIZE = 150
"""Image statistics use every n-th pixel so that the longer side has about this many (from 300
pixels on; LeRobot's downsampling): statistics of a few hundred thousand pixels per episode are as
good as of all of them."""


@dataclass(frozen=True)
class VideoEncoding:
    """How camera frames are encoded: an encoder PyAV has, and its options."""

    encoder: str = "libsvtav1"
    crf: int = 30
    """Constant rate factor: higher is smaller and lossier (LeRobot's default for AV1)."""
    gop: int = 2
    """A keyframe every ``gop`` frames, so any frame decodes after at most ``gop - 1`` others
    (training reads frames at random)."""
    preset: str = "12"
    """Encoder speed preset (SVT-AV1: 0 slowest to 13 fastest; x264: names)."""
    pix_fmt: str = "yuv420p"
    """Chroma subsampled 2x2 (widths and heights must be even), what every player decodes."""

    @property
    def codec(self) -> str:
        """The codec's name as LeRobot records it (``av1``, ``h264``)."""
        return str(av.Codec(self.encoder, "w").canonical_name)

    def options(self) -> dict[str, str]:
        return {"crf": str(self.crf), "g": str(self.gop), "preset": self.preset}


H264 = VideoEncoding(encoder="libx264", crf=23, preset="veryfast")
"""H.264 through x264, for PyAV builds without SVT-AV1 (larger files at the same error)."""


def _next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file + 1 >= chunks_size else (chunk, file + 1)


# ---- statistics ------------------------------------------------------------------------------

Stats = dict[str, np.ndarray]


def _quantile_key(quantile: float) -> str:
    return f"q{round(quantile * 100):02d}"


def _vector_stats(values: np.ndarray) -> Stats:
    """Statistics per value of ``[T]`` or ``[T, D]`` data (shape ``(1,)`` or ``(D,)``)."""
    data = values.astype(np.float64).reshape(len(values), -1)
    stats = {
        "min": data.min(axis=0),
        "max": data.max(axis=0),
        "mean": data.mean(axis=0),
        "std": data.std(axis=0),
        "count": np.array([len(values)], dtype=np.int64),
    }
    for quantile, value in zip(QUANTILES, np.quantile(data, QUANTILES, axis=0), strict=True):
        stats[_quantile_key(quantile)] = value
    return stats


def _image_stats(frames: npt.NDArray[np.uint8]) -> Stats:
    """Statistics per channel in [0, 1], shaped ``(3, 1, 1)``, of a sample of ``[T, H, W, 3]``:
    exact for the sampled pixels, from each channel's histogram of the 256 levels (a quantile is
    the lowest level at which the cumulative share reaches it)."""
    picks = np.unique(np.round(np.linspace(0, len(frames) - 1, min(len(frames), IMAGE_STATS_FRAMES))))
    longer = max(frames.shape[1], frames.shape[2])
    step = max(1, longer // IMAGE_STATS_SIZE) if longer >= 2 * IMAGE_STATS_SIZE else 1
    pixels = frames[picks.astype(np.intp), ::step, ::step].reshape(-1, 3)
    counts = np.stack([np.bincount(pixels[:, c], minlength=256) for c in range(3)]).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    share = counts / len(pixels)
    mean = share @ levels
    cumulative = np.cumsum(share, axis=1)
    stats = {
        "min": np.argmax(counts > 0, axis=1).astype(np.float64),
        "max": 255.0 - np.argmax(counts[:, ::-1] > 0, axis=1),
        "mean": mean,
        "std": np.sqrt(np.maximum(share @ levels**2 - mean**2, 0.0)),
    }
    for quantile in QUANTILES:
        # less a hair for the rounding of the cumulative sum (a share of exactly q reaches q)
        reached = cumulative >= quantile - 1e-12
        stats[_quantile_key(quantile)] = np.argmax(reached, axis=1).astype(np.float64)
    result = {key: (value / 255.0).reshape(3, 1, 1) for key, value in stats.items()}
    result["count"] = np.array([len(picks)], dtype=np.int64)  # frames, not pixels (LeRobot's count)
    return result


def _aggregate(stats: Sequence[Stats]) -> Stats:
    """One feature's statistics over several episodes (LeRobot's aggregation)."""
    counts = np.array([s["count"][0] for s in stats], dtype=np.float64)
    total = counts.sum()
    weights = (counts / total).reshape((-1,) + (1,) * stats[0]["mean"].ndim)
    means = np.stack([s["mean"] for s in stats])
    mean = (weights * means).sum(axis=0)
    variance = (weights * (np.stack([s["std"] for s in stats]) ** 2 + (means - mean) ** 2)).sum(axis=0)
    result = {
        "min": np.min(np.stack([s["min"] for s in stats]), axis=0),
        "max": np.max(np.stack([s["max"] for s in stats]), axis=0),
        "mean": mean,
        "std": np.sqrt(variance),
        "count": np.array([int(total)], dtype=np.int64),
    }
    for quantile in QUANTILES:
        key = _quantile_key(quantile)
        result[key] = (weights * np.stack([s[key] for s in stats])).sum(axis=0)
    return result


def _as_json(stats: Mapping[str, Stats]) -> dict[str, dict[str, Any]]:
    return {feature: {key: value.tolist() for key, value in s.items()} for feature, s in stats.items()}


# ---- writing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Limits:
    chunks_size: int
    data_mb: float
    video_mb: float


def _threads() -> set[int]:
    return {int(tid) for tid in os.listdir("/proc/self/task")}


@contextlib.contextmanager
def _ordinary_scheduling() -> Iterator[None]:
    """Undo what SVT-AV1 does to scheduling. Run as root, its encoder puts the thread that opens it
    and its own worker threads under SCHED_FIFO 99 (measured here): a CPU-hungry encoder would
    then outrank a robot's control loop on the same machine, and the calling thread would stay
    real-time for the rest of the process. The caller's policy is restored, and threads the encoder
    started are returned to SCHED_OTHER."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    before = _threads()
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            os.sched_setscheduler(0, policy, param)
        for tid in _threads() - before:
            with contextlib.suppress(OSError):  # a worker that has exited meanwhile
                if os.sched_getscheduler(tid) in (os.SCHED_FIFO, os.SCHED_RR):
                    os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))


class _VideoFiles:
    """One camera's video files: one continuous stream per file, episodes back to back."""

    def __init__(
        self, root: Path, key: str, size: tuple[int, int], fps: int, encoding: VideoEncoding, limits: _Limits
    ) -> None:
        self.root, self.key, self.size = root, key, size
        self.fps, self.encoding, self.limits = fps, encoding, limits
        self.chunk, self.file = 0, 0
        self.frames = 0
        """Frames in the open file."""
        self._bytes = 0
        """Encoded bytes in the open file (the muxer's buffered output and the encoder's
        lookahead are not on disk yet)."""
        self._container: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None

    def _path(self) -> Path:
        return self.root / VIDEO_PATH.format(video_key=self.key, chunk_index=self.chunk, file_index=self.file)

    def start_episode(self) -> tuple[int, int, float]:
        """Chunk index, file index and start time in the file of the next episode's frames."""
        if self._container is not None and self._bytes >= self.limits.video_mb * 2**20:
            self.close()
            self.chunk, self.file = _next_file(self.chunk, self.file, self.limits.chunks_size)
        if self._container is None:
            path = self._path()
            path.parent.mkdir(parents=True, exist_ok=True)
            # SVT-AV1 prints its banner and settings to stderr for every stream unless told not to.
            os.environ.setdefault("SVT_LOG", "1")
            container = av.open(str(path), "w", format="mp4")
            stream = container.add_stream(
                self.encoding.encoder, rate=self.fps, options=self.encoding.options()
            )
            assert isinstance(stream, av.VideoStream)
            stream.height, stream.width = self.size
            stream.pix_fmt = self.encoding.pix_fmt
            self._container, self._stream, self.frames, self._bytes = container, stream, 0, 0
        return self.chunk, self.file, self.frames / self.fps

    def write(self, images: npt.NDArray[np.uint8]) -> None:
        assert self._container is not None and self._stream is not None
        for image in images:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = self.frames
            frame.time_base = Fraction(1, self.fps)
            # The first frame of a file opens the encoder and starts its threads; the scheduling
            # check (two listings of /proc) is needed there only, not on every frame.
            with _ordinary_scheduling() if self.frames == 0 else contextlib.nullcontext():
                packets = self._stream.encode(frame)
            self._container.mux(packets)
            self._bytes += sum(packet.size for packet in packets)
            self.frames += 1

    def close(self) -> None:
        """Finish the open file (if any)."""
        if self._container is None or self._stream is None:
            return
        with _ordinary_scheduling():
            self._container.mux(self._stream.encode(None))
        self._container.close()
        self._container, self._stream = None, None

    def abort(self) -> None:
        """Close the open file, whose content is discarded."""
        container, stream = self._container, self._stream
        self._container, self._stream = None, None
        if container is None or stream is None:
            return
        with (
            contextlib.suppress(av.FFmpegError),
            _ordinary_scheduling(),
        ):  # SVT-AV1 complains when closed unflushed
            container.mux(stream.encode(None))
        container.close()


class LeRobotWriter:
    """Writes episodes into a new LeRobot v3.0 dataset at ``root`` (module doc).

    ``fps``: the control rate every episode's frames must have; ``robot_type``: info.json's robot
    type (e.g. ``fr3``). ``chunks_size`` and the file sizes as in info.json (LeRobot's defaults;
    fractions of a MB make small test datasets span several files). ``root`` must not exist or be
    an empty directory. Use as a context manager: leaving it normally closes (finishes) the
    dataset, an exception discards it.
    """

    def __init__(
        self,
        root: Path,
        fps: int,
        *,
        robot_type: str | None = None,
        video: VideoEncoding | None = None,
        chunks_size: int = CHUNKS_SIZE,
        data_files_size_in_mb: float = DATA_FILE_SIZE_MB,
        video_files_size_in_mb: float = VIDEO_FILE_SIZE_MB,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise FileExistsError(f"{root}: exists and is not an empty directory; refusing to overwrite it")
        self.root = root
        self.fps = fps
        self.robot_type = robot_type
        self.video = video or VideoEncoding()
        self._codec = self.video.codec  # an encoder this PyAV lacks fails here, not mid-dataset
        self.limits = _Limits(chunks_size, data_files_size_in_mb, video_files_size_in_mb)
        root.parent.mkdir(parents=True, exist_ok=True)
        self._work = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
        self.layout: Layout | None = None
        self.frames = 0
        self._episodes: list[dict[str, Any]] = []
        self._episode_stats: list[dict[str, Stats]] = []
        self._tasks: dict[str, int] = {}
        self._videos: dict[str, _VideoFiles] = {}
        self._data: pq.ParquetWriter | None = None
        self._data_chunk, self._data_file, self._data_bytes = 0, 0, 0
        self._closed = False
        self._broken = False
        self._result: Path | None = None

    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    @property
    def episodes(self) -> int:
        """Episodes written so far."""
        return len(self._episodes)

    def add(self, episode: SftEpisode) -> int:
        """Append ``episode``; return its episode index. :class:`EpisodeRejected` (nothing written)
        if it does not fit the dataset; any other error leaves the writer unusable (abort it)."""
        if self._closed or self._broken:
            raise RuntimeError(f"{self.root}: the writer is closed, or broken by an earlier error")
        episode.check_rate(self.fps)
        layout = Layout.of(episode)
        if self.layout is None:
            odd = [name for name, height, width in layout.cameras if height % 2 or width % 2]
            if odd and self.video.pix_fmt == "yuv420p":
                raise EpisodeRejected(f"cameras {odd}: yuv420p video needs even image widths and heights")
            self.layout = layout
        else:
            self.layout.check(episode)
        try:
            return self._append(episode)
        except BaseException:
            self._broken = True
            raise

    def _append(self, episode: SftEpisode) -> int:
        index = len(self._episodes)
        task_index = self._tasks.setdefault(episode.task, len(self._tasks))
        columns = self._frame_columns(episode, index, task_index)
        row: dict[str, Any] = {"episode_index": index, "tasks": [episode.task], "length": len(episode)}
        row.update(self._write_data(columns))
        stats = {name: _vector_stats(values) for name, values in columns.items()}
        for camera, images in episode.cameras.items():
            key = CAMERA_PREFIX + camera
            row.update(self._write_video(key, images))
            stats[key] = _image_stats(images)
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
        for feature, feature_stats in stats.items():
            for name, value in feature_stats.items():
                row[f"stats/{feature}/{name}"] = value.tolist()
        info = episode.info
        row.update(
            success=episode.success,
            robot_id=info.robot_id,
            source=info.origin.value,
            source_episode_id=info.episode_id,
            extra=json.dumps(dict(info.extra), sort_keys=True),
        )
        self._episodes.append(row)
        self._episode_stats.append(stats)
        self.frames += len(episode)
        return index

    def _frame_columns(self, episode: SftEpisode, index: int, task_index: int) -> dict[str, np.ndarray]:
        frames = len(episode)
        return {
            STATE: episode.state,
            ACTION: episode.action,
            BASE_ACTION: episode.base_action,
            RESIDUAL: episode.residual,
            STAMP: episode.timestamps,
            "timestamp": (np.arange(frames) / self.fps).astype(np.float32),
            "frame_index": np.arange(frames, dtype=np.int64),
            "episode_index": np.full(frames, index, dtype=np.int64),
            "index": np.arange(self.frames, self.frames + frames, dtype=np.int64),
            "task_index": np.full(frames, task_index, dtype=np.int64),
        }

    def _write_data(self, columns: dict[str, np.ndarray]) -> dict[str, int]:
        frames = len(columns["index"])
        table = pa.table(
            {
                name: pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
                if values.ndim == 2
                else pa.array(values)
                for name, values in columns.items()
            }
        )
        if self._data is not None and self._data_bytes >= self.limits.data_mb * 2**20:
            self._data.close()
            self._data = None
            self._data_chunk, self._data_file = _next_file(
                self._data_chunk, self._data_file, self.limits.chunks_size
            )
        if self._data is None:
            path = self._work / DATA_PATH.format(chunk_index=self._data_chunk, file_index=self._data_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data = pq.ParquetWriter(path, table.schema)
            self._data_bytes = 0
        # One row group per episode: a reader that filters on episode_index skips the others.
        self._data.write_table(table)
        self._data_bytes += table.nbytes
        return {
            "data/chunk_index": self._data_chunk,
            "data/file_index": self._data_file,
            "dataset_from_index": self.frames,
            "dataset_to_index": self.frames + frames,
        }

    def _write_video(self, key: str, images: npt.NDArray[np.uint8]) -> dict[str, Any]:
        videos = self._videos.get(key)
        if videos is None:
            size = (int(images.shape[1]), int(images.shape[2]))
            videos = self._videos[key] = _VideoFiles(self._work, key, size, self.fps, self.video, self.limits)
        chunk, file, start = videos.start_episode()
        videos.write(images)
        return {
            f"videos/{key}/chunk_index": chunk,
            f"videos/{key}/file_index": file,
            f"videos/{key}/from_timestamp": start,
            f"videos/{key}/to_timestamp": start + len(images) / self.fps,
        }

    def _features(self) -> dict[str, Any]:
        assert self.layout is not None
        layout = self.layout
        features: dict[str, Any] = {}
        for camera, height, width in layout.cameras:
            features[CAMERA_PREFIX + camera] = {
                "dtype": "video",
                "shape": [height, width, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": height,
                    "video.width": width,
                    "video.codec": self._codec,
                    "video.pix_fmt": self.video.pix_fmt,
                    "video.fps": self.fps,
                    "video.channels": 3,
                    "video.g": self.video.gop,
                    "video.crf": self.video.crf,
                    "video.preset": int(preset) if (preset := self.video.preset).isdigit() else preset,
                    "video.encoder": self.video.encoder,
                    "has_audio": False,
                    "is_depth_map": False,
                },
            }
        for name, dim, names in (
            (STATE, layout.state_dim, layout.state_names),
            (ACTION, layout.action_dim, layout.action_names),
            (BASE_ACTION, layout.action_dim, layout.action_names),
            (RESIDUAL, layout.action_dim, layout.action_names),
        ):
            features[name] = {"dtype": "float32", "shape": [dim], "names": list(names) or None}
        features[STAMP] = {"dtype": "float64", "shape": [1], "names": None}
        features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
        for name in _INDICES:
            features[name] = {"dtype": "int64", "shape": [1], "names": None}
        return features

    def close(self) -> Path | None:
        """Finish the dataset and move it to ``root``; return ``root``, or None (and leave nothing
        behind) when no episode was written. Idempotent. A writer broken by an error while adding
        an episode is discarded instead (RuntimeError)."""
        if self._closed:
            return self._result
        if self._broken:
            self.abort()
            raise RuntimeError(f"{self.root}: an error while adding an episode broke the dataset; discarded")
        self._closed = True
        try:
            if self._episodes:
                self._result = self._finish()
            else:
                shutil.rmtree(self._work)
        except BaseException:
            self.abort()
            raise
        return self._result

    def _finish(self) -> Path:
        for videos in self._videos.values():
            videos.close()
        if self._data is not None:
            self._data.close()
        work = self._work
        episodes_path = work / EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self._episodes), episodes_path)
        self._write_tasks(work / TASKS_PATH)
        features = self._features()
        stats = {
            feature: _aggregate([s[feature] for s in self._episode_stats])
            for feature in self._episode_stats[0]
        }
        for path in sorted(p for p in work.rglob("*") if p.is_file()):
            with path.open("rb") as done:
                os.fsync(done.fileno())
        _write_json(work / STATS_PATH, _as_json(stats))
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self._episodes),
            "total_frames": self.frames,
            "total_tasks": len(self._tasks),
            "chunks_size": self.limits.chunks_size,
            "data_files_size_in_mb": self.limits.data_mb,
            "video_files_size_in_mb": self.limits.video_mb,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self._videos else None,
            "features": features,
        }
        _write_json(work / INFO_PATH, info)  # last: a directory with info.json is a whole dataset
        if self.root.exists():
            self.root.rmdir()  # empty (checked on opening)
        work.rename(self.root)
        fsync_directory(self.root.parent)
        return self.root

    def _write_tasks(self, path: Path) -> None:
        """tasks.parquet as pandas writes a DataFrame indexed by task (how LeRobot reads it)."""
        tasks = sorted(self._tasks, key=self._tasks.__getitem__)
        pandas_meta = {
            "index_columns": ["task"],
            "column_indexes": [
                {
                    "name": None,
                    "field_name": None,
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": {"encoding": "UTF-8"},
                }
            ],
            "columns": [
                {
                    "name": "task_index",
                    "field_name": "task_index",
                    "pandas_type": "int64",
                    "numpy_type": "int64",
                    "metadata": None,
                },
                {
                    "name": "task",
                    "field_name": "task",
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": None,
                },
            ],
            "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": "2.2.3",
        }
        table = pa.table(
            {"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())}
        ).replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)

    def abort(self) -> None:
        """Discard everything written (idempotent)."""
        self._closed = True
        self._result = None
        for videos in self._videos.values():
            videos.abort()
        if self._data is not None:
            self._data.close()
            self._data = None
        shutil.rmtree(self._work, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=4, ensure_ascii=False).encode()
    atomic_write(path, lambda out: out.write(text))


# ---- reading ---------------------------------------------------------------------------------


class LeRobotReader:
    """Reads a LeRobot v3.0 dataset written by :class:`LeRobotWriter` back as
    :class:`~pld_ros.data.sft_episode.SftEpisode` s, one episode at a time (videos decoded with
    PyAV). Raises ValueError naming the file for a dataset that is not one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        info_path = root / INFO_PATH
        try:
            self.info: dict[str, Any] = json.loads(info_path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{info_path}: not a LeRobot dataset: {exc}") from exc
        if self.info.get("codebase_version") != CODEBASE_VERSION:
            raise ValueError(
                f"{info_path}: codebase_version {self.info.get('codebase_version')!r}, "
                f"this reader reads {CODEBASE_VERSION}"
            )
        self.fps = int(self.info["fps"])
        self.stats: dict[str, Any] = json.loads((root / STATS_PATH).read_text())
        tasks = pq.read_table(root / TASKS_PATH).to_pydict()
        self.tasks = dict(zip(tasks["task_index"], tasks["task"], strict=True))
        """task_index -> task text."""
        paths = sorted((root / "meta/episodes").glob("chunk-*/file-*.parquet"))
        rows = [row for path in paths for row in pq.read_table(path).to_pylist()]
        self.episodes: list[dict[str, Any]] = sorted(rows, key=lambda row: int(row["episode_index"]))
        """The rows of meta/episodes in episode order."""
        if [row["episode_index"] for row in self.episodes] != list(range(len(self.episodes))):
            raise ValueError(f"{root}/meta/episodes: episode indices are not 0..{len(self.episodes) - 1}")
        features: dict[str, Any] = self.info["features"]
        self.cameras = [key[len(CAMERA_PREFIX) :] for key, f in features.items() if f["dtype"] == "video"]
        """Camera names (without the ``observation.images.`` prefix)."""

    def __len__(self) -> int:
        return len(self.episodes)

    def __iter__(self) -> Iterator[SftEpisode]:
        for index in range(len(self)):
            yield self.episode(index)

    def frame_table(self, index: int) -> dict[str, np.ndarray]:
        """Episode ``index``'s frame rows, column by column (vectors as ``[T, D]``)."""
        row = self.episodes[index]
        path = self.root / self.info["data_path"].format(
            chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
        )
        table = pq.read_table(path, filters=[("episode_index", "=", index)])
        columns: dict[str, np.ndarray] = {}
        for name in table.column_names:
            column = table.column(name).combine_chunks()
            if pa.types.is_fixed_size_list(column.type):
                columns[name] = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
            else:
                columns[name] = column.to_numpy()
        frames = np.asarray(columns["frame_index"])
        expected_rows = np.arange(row["dataset_from_index"], row["dataset_to_index"])
        if not np.array_equal(frames, np.arange(row["length"])) or not np.array_equal(
            columns["index"], expected_rows
        ):
            raise ValueError(f"{path}: rows of episode {index} do not match meta/episodes")
        return columns

    def camera_frames(self, index: int, camera: str) -> npt.NDArray[np.uint8]:
        """Episode ``index``'s frames of ``camera``, ``[T, H, W, 3]``, decoded from its video file."""
        row = self.episodes[index]
        key = CAMERA_PREFIX + camera
        path = self.root / self.info["video_path"].format(
            video_key=key,
            chunk_index=row[f"videos/{key}/chunk_index"],
            file_index=row[f"videos/{key}/file_index"],
        )
        start, stop = row[f"videos/{key}/from_timestamp"], row[f"videos/{key}/to_timestamp"]
        images = _decode(path, start, stop, 0.5 / self.fps)
        if len(images) != row["length"]:
            raise ValueError(
                f"{path}: {len(images)} frames between {start:.3f} s and {stop:.3f} s for episode "
                f"{index}, expected {row['length']}"
            )
        return np.stack(images)

    def episode(self, index: int) -> SftEpisode:
        """Episode ``index`` with its frames decoded."""
        row = self.episodes[index]
        columns = self.frame_table(index)
        features = self.info["features"]
        return SftEpisode(
            task=self.tasks[int(columns["task_index"][0])],
            cameras={camera: self.camera_frames(index, camera) for camera in self.cameras},
            state=columns[STATE],
            action=columns[ACTION],
            base_action=columns[BASE_ACTION],
            residual=columns[RESIDUAL],
            timestamps=columns[STAMP],
            success=bool(row["success"]),
            info=EpisodeInfo(
                robot_id=row["robot_id"],
                origin=Origin(row["source"]),
                episode_id=int(row["source_episode_id"]),
                extra=json.loads(row["extra"]),
            ),
            state_names=tuple(features[STATE]["names"] or ()),
            action_names=tuple(features[ACTION]["names"] or ()),
        )


def _decode(path: Path, start: float, stop: float, tolerance: float) -> list[npt.NDArray[np.uint8]]:
    """The frames of ``path`` shown from ``start`` to before ``stop`` (s), in order."""
    images = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        assert stream.time_base is not None
        container.seek(math.floor(start / stream.time_base), stream=stream)  # back to a keyframe
        for frame in container.decode(stream):
            time = frame.time
            if time is None or time < start - tolerance:
                continue
            if time >= stop - tolerance:
                break
            images.append(frame.to_ndarray(format="rgb24"))
    return images
