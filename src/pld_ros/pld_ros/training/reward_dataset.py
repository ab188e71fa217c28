"""Labelled frames for the reward classifier: camera views with a success label per stage head.

A dataset is a directory of episode files, one ``<episode_id>.npz`` per episode, each written
whole or not at all (:func:`~pld_ros.core.atomic_file.atomic_write`: temporary file, fsync,
rename), so a collection killed mid-way leaves only complete episodes and can resume by skipping
the ids already there. Several directories (several sources) are trained on together; episode ids
must be unique across them, because the held-out split is drawn by episode and neighbouring frames
of one episode would leak from training into the held-out set.

One file holds (``np.savez_compressed``, nothing pickled; zip's CRC-32 catches damage on disk):

- ``views``: uint8 ``[T, V, H, W, 3]``, the classifier's input views in ``view_names`` order
  (the profile's ``reward.views``), rgb8 at the policy-view size the reward node feeds;
- ``labels``: int8 ``[T, S]``, one column per classifier head (``heads``): :data:`POSITIVE`,
  :data:`NEGATIVE`, or :data:`UNLABELLED` where the source says nothing about that head (a
  privileged signal that only knows the last stage, a keyboard labeller who skipped frames);
  unlabelled entries take no part in training or scores;
- ``stamps``: float64 ``[T]``, seconds since the episode's first frame (the frames' capture
  times for a bag, tick times for a simulated episode);
- ``meta``: a JSON string: ``format`` (:data:`FORMAT_VERSION`), ``episode_id``, ``source``,
  ``view_names``, ``heads`` and ``info``.

Any source fills a :class:`LabelledEpisode` and calls :func:`save_labelled_episode`: simulated
rollouts labelled by the simulator's privileged success (:func:`labelled_rollout`, used by
``pld reward collect``), and equally frames read from a rosbag2 recording labelled by its
``sim/success`` topic or by a person at the keyboard (``source`` says which, e.g.
``bag:keyboard``; ``info`` can carry the bag's path and topics). This module imports neither torch
nor the simulator, so a bag reader can depend on it.
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import numpy.typing as npt

from pld_ros.core.atomic_file import atomic_write

if TYPE_CHECKING:
    from pld_ros.profile import Profile
    from pld_ros.training.rollouts import Episode

FORMAT_VERSION = 1
"""Version of the file layout, stored in each file's ``meta``; other versions are refused."""
SUFFIX = ".npz"
POSITIVE = 1
"""Label: the head's stage is done in this frame."""
NEGATIVE = 0
"""Label: the head's stage is not done in this frame."""
UNLABELLED = -1
"""Label: nothing is known about this head in this frame (ignored by training and scores)."""

InfoValue = str | int | float | bool
_EPISODE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # also a safe file name
_ARRAYS = ("views", "labels", "stamps", "meta")


@dataclass(frozen=True, eq=False)
class LabelledEpisode:
    """The frames of one episode with their labels (layout: module docstring). Compared by
    identity (its arrays have no single truth value); validated on construction."""

    episode_id: str
    """Unique across the datasets trained on together; the file's name without ``.npz``."""
    source: str
    """Where the frames and labels came from, ``<frames>:<labeller>`` by convention:
    ``sim:privileged``, ``bag:privileged``, ``bag:keyboard``."""
    view_names: tuple[str, ...]
    heads: tuple[str, ...]
    """Name of each classifier head, in output order (the profile's stage names by ``Stage.head``)."""
    views: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int8]
    stamps: npt.NDArray[np.float64]
    info: Mapping[str, InfoValue] = field(default_factory=dict)
    """Anything else worth keeping with the episode (profile, policy, seed, outcome, bag path)."""

    def __post_init__(self) -> None:
        if not _EPISODE_ID.fullmatch(self.episode_id):
            raise ValueError(
                f"episode_id {self.episode_id!r}: use letters, digits, '_', '-' and '.', not first"
            )
        for name, names in (("view_names", self.view_names), ("heads", self.heads)):
            if not names or len(set(names)) != len(names):
                raise ValueError(f"{name} must be non-empty and unique, got {names}")
        ticks = len(self.labels)
        views = self.views
        if (
            views.dtype != np.uint8
            or views.ndim != 5
            or views.shape[:2] != (ticks, len(self.view_names))
            or views.shape[4] != 3
            or ticks < 1
        ):
            raise ValueError(
                f"views: expected uint8 ({ticks}, {len(self.view_names)}, H, W, 3) with at least "
                f"one frame, got {views.dtype} {views.shape}"
            )
        if self.labels.dtype != np.int8 or self.labels.shape != (ticks, len(self.heads)):
            raise ValueError(
                f"labels: expected int8 ({ticks}, {len(self.heads)}), "
                f"got {self.labels.dtype} {self.labels.shape}"
            )
        if not np.isin(self.labels, (POSITIVE, NEGATIVE, UNLABELLED)).all():
            raise ValueError(f"labels: values must be {POSITIVE}, {NEGATIVE} or {UNLABELLED}")
        if self.stamps.dtype != np.float64 or self.stamps.shape != (ticks,):
            raise ValueError(
                f"stamps: expected float64 ({ticks},), got {self.stamps.dtype} {self.stamps.shape}"
            )
        if not np.isfinite(self.stamps).all():
            raise ValueError("stamps: NaN or infinite values")
        for key, value in self.info.items():
            if not isinstance(value, (str, int, float, bool)):
                raise ValueError(f"info[{key!r}]: {type(value).__name__} is not a str, int, float or bool")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int]:
        """Height and width of the views."""
        return int(self.views.shape[2]), int(self.views.shape[3])

    def meta_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT_VERSION,
                "episode_id": self.episode_id,
                "source": self.source,
                "view_names": list(self.view_names),
                "heads": list(self.heads),
                "info": dict(self.info),
            },
            sort_keys=True,
        )


def guard_boundaries(labels: npt.NDArray[np.int8], ticks: int) -> npt.NDArray[np.int8]:
    """``labels`` (``[T, S]``) with the ``ticks`` frames on each side of every change between
    POSITIVE and NEGATIVE (consecutive frames, per head) set UNLABELLED.

    A success label flips between two frames that look nearly the same: the privileged signal at
    a fixed lift height the cube crosses within a tick, a person's key press a frame or two early
    or late. Those frames are ambiguous by construction; counting them as errors (or mining them as
    hard negatives) measures the label's jitter, not the classifier."""
    guarded: npt.NDArray[np.int8] = labels.copy()
    if ticks <= 0:
        return guarded
    for head in range(labels.shape[1]):
        column = labels[:, head]
        flips = np.flatnonzero(
            (column[1:] != column[:-1]) & (column[1:] != UNLABELLED) & (column[:-1] != UNLABELLED)
        )
        for flip in flips:  # between frames flip and flip + 1
            guarded[max(flip + 1 - ticks, 0) : flip + 1 + ticks, head] = UNLABELLED
    return guarded


def episode_path(directory: Path, episode_id: str) -> Path:
    """Where :func:`save_labelled_episode` puts episode ``episode_id`` in ``directory``."""
    return directory / f"{episode_id}{SUFFIX}"


def save_labelled_episode(episode: LabelledEpisode, directory: Path) -> Path:
    """Write ``episode`` to ``directory`` (created if needed) atomically and durably; replace an
    earlier file of the same id. Returns the file's path."""

    def write(out: BinaryIO) -> None:
        np.savez_compressed(
            out,
            views=episode.views,
            labels=episode.labels,
            stamps=episode.stamps,
            meta=np.str_(episode.meta_json()),
        )

    return atomic_write(episode_path(directory, episode.episode_id), write)


def load_labelled_episode(path: Path) -> LabelledEpisode:
    """Read a file written by :func:`save_labelled_episode`; ValueError naming the file and the
    field for anything malformed."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in _ARRAYS if name not in data.files]
            if missing:
                raise ValueError(f"missing array(s) {', '.join(missing)}")
            arrays = {name: data[name] for name in _ARRAYS}
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"{path}: not a labelled-frames file: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{path}: not a labelled-frames file: {exc}") from exc
    try:
        meta = json.loads(str(arrays["meta"]))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: meta: not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: meta: expected a JSON object")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: meta.format: {meta.get('format')!r}, this code reads {FORMAT_VERSION}")
    for key, kind in (
        ("episode_id", str),
        ("source", str),
        ("view_names", list),
        ("heads", list),
        ("info", dict),
    ):
        if not isinstance(meta.get(key), kind):
            raise ValueError(f"{path}: meta.{key}: expected a {kind.__name__}, got {meta.get(key)!r}")
    if meta["episode_id"] != path.name.removesuffix(SUFFIX):
        raise ValueError(f"{path}: meta.episode_id {meta['episode_id']!r} does not match the file name")
    try:
        return LabelledEpisode(
            episode_id=meta["episode_id"],
            source=meta["source"],
            view_names=tuple(str(name) for name in meta["view_names"]),
            heads=tuple(str(name) for name in meta["heads"]),
            views=arrays["views"],
            labels=arrays["labels"],
            stamps=arrays["stamps"],
            info=meta["info"],
        )
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def labelled_files(directory: Path) -> list[Path]:
    """The complete episode files of a dataset directory, in name order (temporaries skipped)."""
    return sorted(p for p in directory.glob(f"*{SUFFIX}") if not p.name.startswith("."))


def disagreement(episode: LabelledEpisode, reference: LabelledEpisode) -> str | None:
    """Why ``episode`` cannot be trained on together with ``reference`` (their views, heads or
    image sizes differ), or None."""
    for what, mine, theirs in (
        ("views", episode.view_names, reference.view_names),
        ("heads", episode.heads, reference.heads),
        ("image size", episode.image_shape, reference.image_shape),
    ):
        if mine != theirs:
            return f"{what} {mine}, but episode {reference.episode_id} has {theirs}"
    return None


def load_labelled_dataset(directories: Sequence[Path]) -> list[LabelledEpisode]:
    """Every episode of ``directories``, checked to agree on views, image size and heads and to
    have unique episode ids; ValueError naming the directory or file otherwise."""
    episodes: list[LabelledEpisode] = []
    paths: dict[str, Path] = {}
    for directory in directories:
        if not directory.is_dir():
            raise ValueError(f"{directory}: not a directory")
        files = labelled_files(directory)
        if not files:
            raise ValueError(f"{directory}: no labelled episodes (*{SUFFIX})")
        for path in files:
            episode = load_labelled_episode(path)
            if episode.episode_id in paths:
                raise ValueError(
                    f"{path}: episode id {episode.episode_id!r} is also {paths[episode.episode_id]}; "
                    "ids must be unique across datasets"
                )
            why = disagreement(episode, episodes[0]) if episodes else None
            if why:
                raise ValueError(f"{path}: {why} ({paths[episodes[0].episode_id]})")
            paths[episode.episode_id] = path
            episodes.append(episode)
    if not episodes:
        raise ValueError("no dataset directories given")
    return episodes


def labelled_rollout(
    episode: Episode,
    episode_id: str,
    heads: Sequence[str],
    final_head: int,
    period: float,
    info: Mapping[str, InfoValue] | None = None,
) -> LabelledEpisode:
    """A simulated rollout (:class:`~pld_ros.training.rollouts.Episode`) labelled by the simulator's
    privileged success signal. The signal says the task is done, so it labels ``final_head`` (the
    head of the profile's last stage); the other heads stay :data:`UNLABELLED`. ``period``: s per
    tick. An episode cut short by an arm fault keeps its frames: each is labelled all the same."""
    labels = np.full((len(episode), len(heads)), UNLABELLED, dtype=np.int8)
    labels[:, final_head] = np.where(episode.success, POSITIVE, NEGATIVE)
    return LabelledEpisode(
        episode_id=episode_id,
        source="sim:privileged",
        view_names=episode.view_names,
        heads=tuple(heads),
        views=episode.views,
        labels=labels,
        stamps=np.arange(len(episode), dtype=np.float64) * period,
        info={
            "seed": episode.seed,
            "succeeded": episode.succeeded,
            "fault": episode.fault,
            **(info or {}),
        },
    )


def privileged_heads(profile: Profile) -> tuple[tuple[str, ...], int]:
    """The classifier heads of ``profile`` (named by the stages they score) and the head a
    simulator's "task done" signal labels: that of the stage whose success ends the episode."""
    if profile.reward is None:
        raise ValueError(f"{profile.name}: no reward section, so no classifier heads")
    stages = profile.reward.stages
    count = 1 + max(stage.head for stage in stages)
    heads = tuple(
        "+".join(stage.name for stage in stages if stage.head == head) or f"head{head}"
        for head in range(count)
    )
    final = [stage.head for stage in stages if stage.on_success == "done"]
    if not final:
        raise ValueError(f"{profile.name}: no stage ends the episode (on_success: done)")
    return heads, final[-1]
