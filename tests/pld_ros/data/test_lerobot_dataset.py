"""LeRobot v3.0 datasets written and read back from real files: parquet (pyarrow) and AV1 video
(PyAV with SVT-AV1), checked frame by frame and against the format's own bookkeeping."""

from __future__ import annotations

import itertools
import json
import os
import threading
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from pld_ros.data.lerobot_dataset import (
    CAMERA_PREFIX,
    H264,
    QUANTILES,
    LeRobotReader,
    LeRobotWriter,
)
from pld_ros.data.sft_episode import EpisodeRejected, SftEpisode
from tests.pld_ros.data.synthetic import FPS, TASKS, episode, psnr

LENGTHS = (12, 20, 7)
MIN_PSNR = 30.0
"""dB; AV1 at CRF 30 gives ~40 dB on these smooth patterns, a frame from the wrong time ~15 dB."""


def write(root: Path, episodes: list[SftEpisode], **options: object) -> Path:
    with LeRobotWriter(root, FPS, robot_type="fr3", **options) as writer:  # type: ignore[arg-type]
        for item in episodes:
            writer.add(item)
    return root


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SftEpisode]]:
    episodes = [episode(i, frames_count=n, success=i != 1, task=TASKS[i % 2]) for i, n in enumerate(LENGTHS)]
    return write(tmp_path_factory.mktemp("lerobot") / "dataset", episodes), episodes


def fail_midway(writer: LeRobotWriter) -> None:
    with writer:
        writer.add(episode(0, frames_count=5))
        raise RuntimeError("stop")


def assert_frames_match(decoded: np.ndarray, original: np.ndarray) -> None:
    """Lossy, but each decoded frame is close to its own original and far from its neighbours."""
    assert decoded.shape == original.shape
    for t in range(len(original)):
        own = psnr(decoded[t], original[t])
        assert own > MIN_PSNR, f"frame {t}: {own:.1f} dB"
        for other in (t - 1, t + 1):
            if 0 <= other < len(original):
                assert psnr(decoded[t], original[other]) < own - 5.0, f"frame {t} looks like frame {other}"


def test_episodes_read_back_as_written(written: tuple[Path, list[SftEpisode]]) -> None:
    root, episodes = written
    reader = LeRobotReader(root)
    assert len(reader) == len(episodes) and reader.fps == FPS
    assert reader.cameras == ["wrist", "side"]
    for index, original in enumerate(episodes):
        loaded = reader.episode(index)
        assert len(loaded) == len(original)
        assert loaded.task == original.task and loaded.success == original.success
        assert loaded.info == original.info
        for name in ("state", "action", "base_action", "residual", "timestamps"):
            assert np.array_equal(getattr(loaded, name), getattr(original, name)), name
        assert loaded.state_names == original.state_names and loaded.action_names == original.action_names
        for camera in original.cameras:
            assert_frames_match(loaded.cameras[camera], original.cameras[camera])


def test_meta_data_and_videos_agree(written: tuple[Path, list[SftEpisode]]) -> None:
    root, episodes = written
    info = json.loads((root / "meta/info.json").read_text())
    total = sum(LENGTHS)
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS and info["robot_type"] == "fr3"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, total, 2)
    assert info["splits"] == {"train": "0:3"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    features = info["features"]
    assert features["observation.state"] == {
        "dtype": "float32",
        "shape": [8],
        "names": list(episodes[0].state_names),
    }
    assert features["residual"]["shape"] == [7] and features["stamp"]["dtype"] == "float64"
    side = features[CAMERA_PREFIX + "side"]
    assert side["dtype"] == "video" and side["shape"] == [48, 80, 3]
    assert side["info"]["video.codec"] == "av1" and side["info"]["video.pix_fmt"] == "yuv420p"

    data = pq.read_table(root / "data/chunk-000/file-000.parquet").to_pydict()
    assert data["index"] == list(range(total))
    assert data["frame_index"] == [f for n in LENGTHS for f in range(n)]
    assert data["episode_index"] == [e for e, n in enumerate(LENGTHS) for _ in range(n)]
    assert np.allclose(data["timestamp"], [f / FPS for n in LENGTHS for f in range(n)])
    assert data["task_index"] == [e % 2 for e, n in enumerate(LENGTHS) for _ in range(n)]
    assert np.allclose(data["action"], np.concatenate([e.action for e in episodes]))

    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.to_pydict() == {"task_index": [0, 1], "task": list(TASKS)}
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]

    rows = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    start = 0
    for index, (row, n) in enumerate(zip(rows, LENGTHS, strict=True)):
        assert row["episode_index"] == index and row["length"] == n
        assert row["tasks"] == [TASKS[index % 2]]
        assert (row["dataset_from_index"], row["dataset_to_index"]) == (start, start + n)
        for camera in ("wrist", "side"):
            key = f"videos/{CAMERA_PREFIX}{camera}"
            assert (row[f"{key}/chunk_index"], row[f"{key}/file_index"]) == (0, 0)
            assert row[f"{key}/from_timestamp"] == pytest.approx(start / FPS)
            assert row[f"{key}/to_timestamp"] == pytest.approx((start + n) / FPS)
        assert row["stats/action/count"] == [n]
        assert np.allclose(row["stats/action/mean"], episodes[index].action.mean(axis=0))
        start += n

    for camera in ("wrist", "side"):
        with av.open(str(root / f"videos/{CAMERA_PREFIX}{camera}/chunk-000/file-000.mp4")) as container:
            times = [frame.time for frame in container.decode(video=0)]
        assert np.allclose(times, np.arange(total) / FPS)  # every frame once, at k / fps


def test_stats_cover_the_whole_dataset(written: tuple[Path, list[SftEpisode]]) -> None:
    root, episodes = written
    stats = json.loads((root / "meta/stats.json").read_text())
    actions = np.concatenate([e.action for e in episodes]).astype(np.float64)
    action = stats["action"]
    assert action["count"] == [sum(LENGTHS)]
    assert np.allclose(action["min"], actions.min(axis=0)) and np.allclose(action["max"], actions.max(axis=0))
    assert np.allclose(action["mean"], actions.mean(axis=0), atol=1e-7)
    assert np.allclose(action["std"], actions.std(axis=0), atol=1e-7)
    assert set(action) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    index = stats["index"]
    assert (index["min"], index["max"], index["count"]) == ([0.0], [sum(LENGTHS) - 1.0], [sum(LENGTHS)])
    image = stats[CAMERA_PREFIX + "wrist"]
    mean = np.array(image["mean"])
    assert mean.shape == (3, 1, 1) and np.all((mean > 0.0) & (mean < 1.0))
    pixels = np.concatenate([e.cameras["wrist"] for e in episodes]).reshape(-1, 3) / 255.0
    assert np.allclose(mean.reshape(3), pixels.mean(axis=0), atol=0.02)
    order = [np.array(image[key]) for key in ("min", "q01", "q10", "q50", "q90", "q99", "max")]
    assert all(np.all(low <= high) for low, high in itertools.pairwise(order))
    # An episode's image statistics: these frames are small and few enough to be taken whole.
    row = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()[0]
    pixels = episodes[0].cameras["side"].reshape(-1, 3).astype(np.float64)
    key = f"stats/{CAMERA_PREFIX}side"
    assert row[f"{key}/count"] == [LENGTHS[0]]
    assert np.allclose(np.array(row[f"{key}/mean"]).reshape(3), pixels.mean(axis=0) / 255)
    assert np.allclose(np.array(row[f"{key}/std"]).reshape(3), pixels.std(axis=0) / 255)
    for quantile in QUANTILES:
        expected = np.quantile(pixels, quantile, axis=0, method="inverted_cdf") / 255
        assert np.allclose(np.array(row[f"{key}/q{round(quantile * 100):02d}"]).reshape(3), expected)


def test_files_rotate_at_their_size_limit_and_chunks_fill(tmp_path: Path) -> None:
    # 50 frames: SVT-AV1 emits its first packet ~40 frames after the first frame it takes, and a
    # file that has not grown yet is not full.
    episodes = [episode(i, frames_count=50) for i in range(3)]
    limits = {"chunks_size": 2, "data_files_size_in_mb": 1e-4, "video_files_size_in_mb": 1e-4}
    root = write(tmp_path / "dataset", episodes, **limits)
    rows = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(r["data/chunk_index"], r["data/file_index"]) for r in rows] == [(0, 0), (0, 1), (1, 0)]
    key = f"videos/{CAMERA_PREFIX}wrist"
    assert [(r[f"{key}/chunk_index"], r[f"{key}/file_index"]) for r in rows] == [(0, 0), (0, 1), (1, 0)]
    assert all(r[f"{key}/from_timestamp"] == 0.0 for r in rows)  # each episode starts a new file
    assert (root / f"videos/{CAMERA_PREFIX}side/chunk-001/file-000.mp4").is_file()
    reader = LeRobotReader(root)
    for index, original in enumerate(episodes):
        loaded = reader.episode(index)
        assert np.array_equal(loaded.state, original.state)
        assert_frames_match(loaded.cameras["side"], original.cameras["side"])


def test_h264_is_the_fallback_encoder(tmp_path: Path) -> None:
    original = episode(0, frames_count=10)
    root = write(tmp_path / "dataset", [original], video=H264)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["features"][CAMERA_PREFIX + "wrist"]["info"]["video.codec"] == "h264"
    assert_frames_match(LeRobotReader(root).camera_frames(0, "wrist"), original.cameras["wrist"])


def test_an_episode_that_does_not_fit_is_refused_and_the_rest_written(tmp_path: Path) -> None:
    root = tmp_path / "dataset"
    with LeRobotWriter(root, FPS) as writer:
        writer.add(episode(0, frames_count=5))
        with pytest.raises(EpisodeRejected, match="cameras"):
            writer.add(episode(1, frames_count=5, cameras={"wrist": (64, 64)}))
        with pytest.raises(EpisodeRejected, match="at 10 fps"):
            LeRobotWriter(tmp_path / "other", 10).add(episode(1))
        writer.add(episode(2, frames_count=6))
    reader = LeRobotReader(root)
    assert len(reader) == 2 and reader.episode(1).info.episode_id == 102
    with pytest.raises(EpisodeRejected, match="even image widths and heights"):
        LeRobotWriter(tmp_path / "odd", FPS).add(episode(0, cameras={"wrist": (63, 64)}))


def test_nothing_is_overwritten_or_left_half_written(tmp_path: Path) -> None:
    existing = tmp_path / "dataset"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        LeRobotWriter(existing, FPS)
    assert (existing / "keep.txt").read_text() == "mine"

    target = tmp_path / "broken"
    with pytest.raises(RuntimeError, match="stop"):
        fail_midway(LeRobotWriter(target, FPS))
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]  # no temporary left either

    with LeRobotWriter(tmp_path / "empty", FPS):
        pass
    assert not (tmp_path / "empty").exists()


def test_the_reader_refuses_what_is_not_a_v3_dataset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"meta/info\.json: not a LeRobot dataset"):
        LeRobotReader(tmp_path)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/info.json").write_text(json.dumps({"codebase_version": "v2.1"}))
    with pytest.raises(ValueError, match=r"codebase_version 'v2\.1'"):
        LeRobotReader(tmp_path)


def test_encoding_leaves_this_process_without_real_time_threads(tmp_path: Path) -> None:
    # Run as root, SVT-AV1 would leave the writing thread and its workers at SCHED_FIFO 99.
    policy = os.sched_getscheduler(0)
    write(tmp_path / "dataset", [episode(0, frames_count=6), episode(1, frames_count=4)])
    assert os.sched_getscheduler(0) == policy
    real_time = [
        tid
        for tid in map(int, os.listdir("/proc/self/task"))
        if tid != threading.get_native_id() and os.sched_getscheduler(tid) in (os.SCHED_FIFO, os.SCHED_RR)
    ]
    assert real_time == [], "threads left real-time by the encoder"
