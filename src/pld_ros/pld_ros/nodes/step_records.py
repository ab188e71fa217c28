"""``StepRecord`` messages to and from the learning core's ticks and episodes.

The replay-buffer node reads records of running episodes (``buffer/steps``) and streams stored
episodes back out as records (``buffer/episodes``); the trainer reads that stream. All three
conversions live here so that both ends agree on the message's layout (see StepRecord.msg).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
from builtin_interfaces.msg import Time

from pld_msgs.msg import StepRecord
from pld_ros.core.episode import Outcome, Phase, RunMode, Source
from pld_ros.core.messages import image_array
from pld_ros.learning.episode_assembler import Ending, Tick
from pld_ros.learning.episode_store import RecordedEpisode
from pld_ros.nodes.camera_publisher import image_message


def tick_of(record: StepRecord, robot_id: str, view_names: tuple[str, ...]) -> Tick:
    """The assembler's tick of a record; ValueError for a record of another robot or view set."""
    if record.robot_id != robot_id:
        raise ValueError(f"robot_id {record.robot_id!r} is not {robot_id!r}")
    if tuple(record.view_names) != view_names:
        raise ValueError(f"views {list(record.view_names)} are not {list(view_names)}")
    return Tick(
        episode_id=int(record.episode_id),
        step=int(record.step),
        views=np.stack([image_array(image) for image in record.views]),
        proprio=np.asarray(record.proprio, dtype=np.float32),
        base_action=np.asarray(record.base_action, dtype=np.float32),
        executed_action=np.asarray(record.executed_action, dtype=np.float32),
        residual=np.asarray(record.residual, dtype=np.float32),
        xi=float(record.xi),
        phase=Phase(record.phase.value),
        source=Source(record.source.value),
        base_policy=record.base_policy,
        residual_version=int(record.residual_version),
        wall_time=time.time(),
    )


def ending_of(record: StepRecord) -> Ending | None:
    """The end of a streamed episode when ``record`` is its last tick (``buffer/episodes``)."""
    if not (record.terminated or record.truncated):
        return None
    return Ending(
        episode_id=int(record.episode_id),
        outcome=Outcome(record.outcome.value),
        mode=RunMode(record.mode.value),
        steps=int(record.step) + 1,
        run_id=record.run_id,
    )


def records_of(episode: RecordedEpisode, stamp: Time) -> Iterator[StepRecord]:
    """A stored episode as ``buffer/episodes`` carries it: every tick, with the end's flags."""
    meta = episode.meta
    last = len(episode) - 1
    for step in range(len(episode)):
        record = StepRecord(
            robot_id=meta.robot_id,
            run_id=meta.run_id,
            episode_id=meta.episode_id,
            step=step,
            view_names=list(episode.view_names),
            xi=meta.xi,
            base_policy=meta.base_policy,
            residual_version=int(meta.residual_version or 0),
            reward=float(episode.reward[step]),
            terminated=step == last and meta.outcome is Outcome.SUCCESS,
            truncated=step == last and meta.outcome is not Outcome.SUCCESS,
        )
        record.header.stamp = stamp
        record.mode.value = int(meta.mode)
        record.outcome.value = int(meta.outcome)
        record.phase.value = int(episode.phase[step])
        record.source.value = int(episode.source[step])
        record.views = [
            image_message(view, stamp, name)
            for name, view in zip(episode.view_names, episode.views[step], strict=True)
        ]
        record.proprio = episode.proprio[step]
        record.base_action = episode.base_action[step]
        record.residual = episode.residual[step]
        record.executed_action = episode.executed_action[step]
        yield record
