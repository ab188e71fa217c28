"""SFT episodes as one HDF5 file in the robomimic / LIBERO layout, and back (h5py).

Layout (robomimic's documented dataset structure, with LIBERO's ``problem_info`` and camera names)::

    data                      attrs: total (frames), num_demos, fps, env_args, problem_info, format
      demo_<i>                attrs: num_samples, task, success, robot_id, source, episode_id, extra
        obs/<camera>_rgb      [T, H, W, 3] uint8, channel-last (LIBERO: agentview_rgb, ...)
        obs/state             [T, S] float32, the robot state
        actions               [T, A] float32, the executed actions
        base_actions          [T, A] float32, the base policy's part of them
        residuals             [T, A] float32, ``actions - base_actions``
        rewards               [T] float32: 1 at the last frame of a successful episode, else 0
        dones                 [T] uint8: 1 at the last frame
        states                [T, S] float32: robomimic's simulator states; recorded robots have
                              none, so the robot state (as robomimic asks for non-simulator data)
        timestamps            [T] float64, s on the recording's clock
    mask
      successful, failed      names of the demos (filter keys, e.g. train.hdf5_filter_key=successful)

``env_args`` (JSON) names no simulator environment (``type`` is null): the data comes from a real
or simulated robot outside robomimic, so train with rollouts disabled. ``problem_info`` (JSON, as in
LIBERO) holds ``language_instruction``: the task when every demo shares one, else empty (each demo's
``task`` attribute holds its own). There is no ``next_obs`` group (LIBERO has none either): with
robomimic, set ``train.hdf5_load_next_obs = False``.

Images are stored one frame per chunk, uncompressed by default: camera images barely compress with
HDF5's filters and slow writing a lot (640x480, development machine: uncompressed ~1400 frames/s;
gzip level 1 ~130 frames/s and 64 % smaller for smooth synthetic images, ~26 frames/s and 17 %
smaller with camera-like noise). Robomimic and LIBERO train on small images: store the size the
policy uses.

The file is written under a hidden temporary name beside ``path`` and renamed into place when
closed, so it is complete or absent.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import h5py
import numpy as np

from pld_ros.core.atomic_file import fsync_directory
from pld_ros.data.sft_episode import EpisodeInfo, Layout, Origin, SftEpisode

FORMAT = "pld_ros.sft_hdf5/1"
"""Stored in ``data.attrs["format"]``; the reader refuses other files."""
CAMERA_SUFFIX = "_rgb"
SUCCESSFUL, FAILED = "successful", "failed"
"""Filter keys under ``mask/``."""

Compression = Literal["gzip", "lzf"]
_DEMO = re.compile(r"demo_(\d+)")


class Hdf5Writer:
    """Writes episodes into a new robomimic/LIBERO-style HDF5 file at ``path`` (module doc).

    ``fps``: the control rate every episode's frames must have; ``compression`` of the images
    (None: uncompressed); ``env_name``: ``env_args``' environment name. Use as a context manager:
    leaving it normally closes (finishes) the file, an exception discards it.
    """

    def __init__(
        self,
        path: Path,
        fps: int,
        *,
        compression: Compression | None = None,
        env_name: str = "pld_ros",
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if path.exists():
            raise FileExistsError(f"{path}: exists; refusing to overwrite it")
        self.path = path
        self.fps = fps
        self.compression = compression
        self.env_name = env_name
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        self._temporary = Path(temporary)
        self._file = h5py.File(self._temporary, "w")
        self._data = self._file.create_group("data")
        self.layout: Layout | None = None
        self.frames = 0
        self._success: list[bool] = []
        self._tasks: set[str] = set()
        self._open = True
        self._broken = False
        self._result: Path | None = None

    def __enter__(self) -> Hdf5Writer:
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
        return len(self._success)

    def add(self, episode: SftEpisode) -> int:
        """Append ``episode`` as the next ``demo_<i>``; return ``i``.
        :class:`~pld_ros.data.sft_episode.EpisodeRejected` (nothing written) if it does not fit the
        file; any other error leaves the writer unusable (abort it)."""
        if not self._open or self._broken:
            raise RuntimeError(f"{self.path}: the writer is closed, or broken by an earlier error")
        episode.check_rate(self.fps)
        if self.layout is None:
            self.layout = Layout.of(episode)
        else:
            self.layout.check(episode)
        try:
            return self._append(episode)
        except BaseException:
            self._broken = True
            raise

    def _append(self, episode: SftEpisode) -> int:
        index = len(self._success)
        frames = len(episode)
        demo = self._data.create_group(f"demo_{index}")
        for camera, images in episode.cameras.items():
            demo.create_dataset(
                f"obs/{camera}{CAMERA_SUFFIX}",
                data=images,
                chunks=(1, *images.shape[1:]),
                compression=self.compression,
            )
        demo.create_dataset("obs/state", data=episode.state)
        demo.create_dataset("actions", data=episode.action)
        demo.create_dataset("base_actions", data=episode.base_action)
        demo.create_dataset("residuals", data=episode.residual)
        rewards = np.zeros(frames, dtype=np.float32)
        rewards[-1] = 1.0 if episode.success else 0.0
        demo.create_dataset("rewards", data=rewards)
        dones = np.zeros(frames, dtype=np.uint8)
        dones[-1] = 1
        demo.create_dataset("dones", data=dones)
        demo.create_dataset("states", data=episode.state)
        demo.create_dataset("timestamps", data=episode.timestamps)
        info = episode.info
        demo.attrs.update(
            {
                "num_samples": frames,
                "task": episode.task,
                "success": episode.success,
                "robot_id": info.robot_id,
                "source": info.origin.value,
                "episode_id": info.episode_id,
                "extra": json.dumps(dict(info.extra), sort_keys=True),
            }
        )
        self._success.append(episode.success)
        self._tasks.add(episode.task)
        self.frames += frames
        return index

    def close(self) -> Path | None:
        """Finish the file and move it to ``path``; return ``path``, or None (and leave nothing
        behind) when no episode was written. Idempotent. A writer broken by an error while adding
        an episode is discarded instead (RuntimeError)."""
        if not self._open:
            return self._result
        if self._broken:
            self.abort()
            raise RuntimeError(f"{self.path}: an error while adding an episode broke the file; discarded")
        if not self._success:
            self.abort()
            return None
        try:
            self._finish()
        except BaseException:
            self.abort()
            raise
        self._result = self.path
        return self._result

    def _finish(self) -> None:
        assert self.layout is not None
        names = [f"demo_{i}" for i in range(len(self._success))]
        mask = self._file.create_group("mask")
        for key, wanted in ((SUCCESSFUL, True), (FAILED, False)):
            chosen = [name for name, success in zip(names, self._success, strict=True) if success is wanted]
            mask.create_dataset(key, data=np.array(chosen, dtype="S"), dtype=h5py.string_dtype("ascii"))
        only_task = next(iter(self._tasks)) if len(self._tasks) == 1 else ""
        self._data.attrs.update(
            {
                "total": self.frames,
                "num_demos": len(names),
                "fps": self.fps,
                "format": FORMAT,
                "env_args": json.dumps(
                    {
                        "env_name": self.env_name,
                        "type": None,
                        "env_kwargs": {
                            "fps": self.fps,
                            "cameras": [camera for camera, _, _ in self.layout.cameras],
                            "state_names": list(self.layout.state_names),
                            "action_names": list(self.layout.action_names),
                        },
                    }
                ),
                "problem_info": json.dumps(
                    {
                        "problem_name": self.env_name,
                        "domain_name": "pld_ros",
                        "language_instruction": only_task,
                    }
                ),
            }
        )
        self._file.close()
        self._open = False
        with self._temporary.open("rb") as written:
            os.fsync(written.fileno())
        os.replace(self._temporary, self.path)
        fsync_directory(self.path.parent)

    def abort(self) -> None:
        """Discard the file (idempotent)."""
        if self._open:
            self._file.close()
            self._open = False
        self._temporary.unlink(missing_ok=True)


class Hdf5Reader:
    """Reads a file written by :class:`Hdf5Writer` back as
    :class:`~pld_ros.data.sft_episode.SftEpisode` s, one demo at a time. Raises ValueError naming the
    file for a file that is not one. Close it (or use ``with``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._file = h5py.File(path, "r")
        except OSError as exc:
            raise ValueError(f"{path}: not an HDF5 file: {exc}") from exc
        data = self._file.get("data")
        if data is None or data.attrs.get("format") != FORMAT:
            self._file.close()
            raise ValueError(f"{path}: not a dataset of format {FORMAT}")
        self._data = data
        self.fps = int(data.attrs["fps"])
        self.env_args: dict[str, Any] = json.loads(data.attrs["env_args"])
        self.demos = sorted(
            (name for name in data if _DEMO.fullmatch(name)), key=lambda name: int(name.split("_")[1])
        )
        """Demo group names in order."""

    def __enter__(self) -> Hdf5Reader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self.demos)

    def __iter__(self) -> Iterator[SftEpisode]:
        for index in range(len(self)):
            yield self.episode(index)

    def mask(self, key: str) -> list[str]:
        """The demo names of filter key ``key`` (e.g. :data:`SUCCESSFUL`)."""
        return [name.decode() for name in self._file[f"mask/{key}"][()]]

    def episode(self, index: int) -> SftEpisode:
        """The episode of ``demo_<index>`` (in :attr:`demos` order)."""
        demo = self._data[self.demos[index]]
        attrs = demo.attrs
        kwargs = self.env_args["env_kwargs"]
        return SftEpisode(
            task=str(attrs["task"]),
            cameras={camera: demo[f"obs/{camera}{CAMERA_SUFFIX}"][()] for camera in kwargs["cameras"]},
            state=demo["obs/state"][()],
            action=demo["actions"][()],
            base_action=demo["base_actions"][()],
            residual=demo["residuals"][()],
            timestamps=demo["timestamps"][()],
            success=bool(attrs["success"]),
            info=EpisodeInfo(
                robot_id=str(attrs["robot_id"]),
                origin=Origin(str(attrs["source"])),
                episode_id=int(attrs["episode_id"]),
                extra=json.loads(attrs["extra"]),
            ),
            state_names=tuple(kwargs["state_names"]),
            action_names=tuple(kwargs["action_names"]),
        )
