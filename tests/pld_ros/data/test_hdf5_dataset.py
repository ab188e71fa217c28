"""robomimic / LIBERO-style HDF5 files written and read back (real files, h5py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from pld_ros.data.hdf5_dataset import FAILED, SUCCESSFUL, Hdf5Reader, Hdf5Writer
from pld_ros.data.sft_episode import EpisodeRejected, SftEpisode
from tests.pld_ros.data.synthetic import FPS, TASKS, episode


def write(path: Path, episodes: list[SftEpisode], **options: object) -> Path:
    with Hdf5Writer(path, FPS, **options) as writer:  # type: ignore[arg-type]
        for item in episodes:
            writer.add(item)
    return path


def fail_midway(writer: Hdf5Writer) -> None:
    with writer:
        writer.add(episode(0, frames_count=4))
        raise RuntimeError("stop")


def assert_same(loaded: SftEpisode, original: SftEpisode) -> None:
    assert loaded.task == original.task and loaded.success == original.success
    assert loaded.info == original.info
    assert loaded.state_names == original.state_names and loaded.action_names == original.action_names
    for name in ("state", "action", "base_action", "residual", "timestamps"):
        assert np.array_equal(getattr(loaded, name), getattr(original, name)), name
    assert list(loaded.cameras) == list(original.cameras)
    for camera, images in original.cameras.items():
        assert np.array_equal(loaded.cameras[camera], images), camera  # lossless


@pytest.mark.parametrize("compression", [None, "gzip", "lzf"])
def test_episodes_read_back_exactly(tmp_path: Path, compression: str | None) -> None:
    episodes = [episode(i, frames_count=n, success=i != 1) for i, n in enumerate((9, 14, 5))]
    path = write(tmp_path / "demos.hdf5", episodes, compression=compression)
    with Hdf5Reader(path) as reader:
        assert len(reader) == 3 and reader.demos == ["demo_0", "demo_1", "demo_2"]
        for index, original in enumerate(episodes):
            assert_same(reader.episode(index), original)
        assert reader.mask(SUCCESSFUL) == ["demo_0", "demo_2"] and reader.mask(FAILED) == ["demo_1"]


def test_the_layout_is_robomimics(tmp_path: Path) -> None:
    episodes = [episode(i, frames_count=n, success=i == 0, task=TASKS[0]) for i, n in enumerate((6, 4))]
    path = write(tmp_path / "demos.hdf5", episodes)
    with h5py.File(path, "r") as f:
        data = f["data"]
        assert data.attrs["total"] == 10 and data.attrs["num_demos"] == 2 and data.attrs["fps"] == FPS
        env_args = json.loads(data.attrs["env_args"])
        assert env_args["env_name"] == "pld_ros" and env_args["env_kwargs"]["cameras"] == ["wrist", "side"]
        assert json.loads(data.attrs["problem_info"])["language_instruction"] == TASKS[0]
        demo = data["demo_0"]
        assert demo.attrs["num_samples"] == 6 and demo.attrs["task"] == TASKS[0]
        assert demo["obs/wrist_rgb"].shape == (6, 64, 64, 3) and demo["obs/wrist_rgb"].dtype == np.uint8
        assert demo["obs/side_rgb"].chunks == (1, 48, 80, 3)
        assert demo["actions"].shape == (6, 7) and demo["obs/state"].shape == (6, 8)
        assert demo["rewards"][()].tolist() == [0, 0, 0, 0, 0, 1.0]
        assert data["demo_1"]["rewards"][()].tolist() == [0, 0, 0, 0]  # failed: no reward
        assert demo["dones"][()].tolist() == [0, 0, 0, 0, 0, 1]
        assert np.array_equal(demo["states"][()], episodes[0].state)
        assert [name.decode() for name in f["mask/successful"][()]] == ["demo_0"]


def test_mixed_tasks_leave_the_file_instruction_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "demos.hdf5", [episode(0, frames_count=3), episode(1, frames_count=3)])
    with h5py.File(path, "r") as f:
        assert json.loads(f["data"].attrs["problem_info"])["language_instruction"] == ""
        assert [f[f"data/demo_{i}"].attrs["task"] for i in (0, 1)] == list(TASKS)


def test_refused_episodes_and_aborts_leave_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "demos.hdf5"
    with Hdf5Writer(path, FPS) as writer:
        writer.add(episode(0, frames_count=4))
        bad = episode(1, frames_count=4)
        three_values = replace(bad, state=bad.state[:, :3], state_names=())
        with pytest.raises(EpisodeRejected, match="state_dim"):
            writer.add(three_values)
    with Hdf5Reader(path) as reader:
        assert len(reader) == 1
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        Hdf5Writer(path, FPS)

    other = tmp_path / "other.hdf5"
    with pytest.raises(RuntimeError, match="stop"):
        fail_midway(Hdf5Writer(other, FPS))
    with Hdf5Writer(tmp_path / "empty.hdf5", FPS):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demos.hdf5"]


def test_the_reader_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "text.hdf5").write_text("not hdf5")
    with pytest.raises(ValueError, match=r"text\.hdf5: not an HDF5 file"):
        Hdf5Reader(tmp_path / "text.hdf5")
    with h5py.File(tmp_path / "foreign.hdf5", "w") as f:
        f.create_group("data")
    with pytest.raises(ValueError, match=r"foreign\.hdf5: not a dataset of format"):
        Hdf5Reader(tmp_path / "foreign.hdf5")
