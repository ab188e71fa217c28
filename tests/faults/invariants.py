"""What must hold whatever fault was injected: the shared checks of the fault suite.

- The arm is never commanded outside its limits: every ``RobotState`` the driver published has a
  finite pose and target, a target inside the profile's workspace box, within the safety layer's
  lead over the measured pose, and moving at most one step (translation and rotation) per tick
  unless it is pulled back toward the arm; the first step after a hold is bounded from the
  measured pose, where the driver resumes (:func:`limit_violations`).
- No recorded episode is lost or corrupted: every episode the supervisor counted is in the
  replay buffer's store with its outcome and finite arrays, the store reports no damaged file,
  and every bag reads back (complete, or readable up to its last chunk when it was cut).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from pld_msgs.msg import RobotState
from pld_ros.core.episode_log import EpisodeRecord
from pld_ros.core.messages import pose_of
from pld_ros.core.spatial import Pose
from pld_ros.data.bags import BagInfo, BagReader, bag_info
from pld_ros.learning.episode_store import EpisodeStore, RecordedEpisode
from pld_ros.profile import SafetyLimits

TOLERANCE = 1e-6
"""m or rad: the float64 pose messages carry the limits exactly; this only absorbs rounding."""
LEAD_STEPS = 5.0
"""The safety layer's bound on the target's lead over the measured pose, in steps
(:class:`pld_ros.core.safety.SafetyFilter`'s ``max_target_lag_steps`` default, which the driver uses)."""
COMMANDED = (RobotState.MODE_MOVING, RobotState.MODE_HOLDING)
"""Modes in which ``ee_target`` is the target the arm is tracking."""


def _stamp(state: RobotState) -> float:
    return float(state.header.stamp.sec) + float(state.header.stamp.nanosec) * 1e-9


def _finite_pose(message: object) -> bool:
    p, q = message.position, message.orientation  # type: ignore[attr-defined]
    return all(math.isfinite(v) for v in (p.x, p.y, p.z, q.x, q.y, q.z, q.w))


def _angle(a: Pose, b: Pose) -> float:
    dot = abs(float(np.dot(a.orientation, b.orientation)))
    return 2.0 * math.acos(min(1.0, dot))


def limit_violations(states: Sequence[RobotState], limits: SafetyLimits, control_rate: float) -> list[str]:
    """Every way the published states break the arm's safety limits (empty: none).

    The safety layer's contract (pld_ros.core.safety): the target stays in the workspace box, and
    each tick it moves at most one step (translation and rotation) from the previous target,
    unless it is pulled back toward the measured pose (closer to it than the previous target);
    and it always lies within the bounded lead of the measured pose (clipped into the box, for an
    arm that is itself outside it). Consecutive
    commanded states may be more than one tick apart when a state was lost on the way (or the
    loop overran): the step bound scales with the ticks between their stamps.
    """
    low = np.asarray(limits.workspace_min) - TOLERANCE
    high = np.asarray(limits.workspace_max) + TOLERANCE
    max_lead = LEAD_STEPS * limits.max_translation_step + TOLERANCE
    problems: list[str] = []
    previous: tuple[float, Pose, int] | None = None
    for index, state in enumerate(states):
        where = f"state {index} (mode {state.mode}, t={_stamp(state):.3f})"
        if not (_finite_pose(state.ee_pose) and _finite_pose(state.ee_target)):
            problems.append(f"{where}: non-finite pose or target")
            previous = None
            continue
        if not math.isfinite(state.gripper_closure):
            problems.append(f"{where}: non-finite gripper closure")
        if state.mode not in COMMANDED:
            previous = None
            continue
        target = pose_of(state.ee_target)
        if ((target.position < low) | (target.position > high)).any():
            problems.append(f"{where}: target {target.position.round(4)} outside the workspace")
        try:
            measured = pose_of(state.ee_pose)
        except ValueError:
            problems.append(f"{where}: a commanded arm without a measured pose")
            continue
        anchor = np.clip(measured.position, limits.workspace_min, limits.workspace_max)
        lead = float(np.linalg.norm(target.position - anchor))
        if lead > max_lead:
            problems.append(f"{where}: target leads the measured pose by {lead:.4f} m")
        if previous is not None and state.mode == RobotState.MODE_MOVING:
            stamp, last, last_mode = previous
            if last_mode == RobotState.MODE_HOLDING:
                # Resuming after a hold restarts from the measured pose (core.arm_controller):
                # the first step is bounded from there, not from the held target.
                last, ticks = Pose(anchor, measured.orientation), 1
            else:
                ticks = max(1, round((_stamp(state) - stamp) * control_rate))
            step = float(np.linalg.norm(target.position - last.position))
            toward_arm = lead < float(np.linalg.norm(last.position - anchor))
            if step > ticks * limits.max_translation_step + TOLERANCE and not toward_arm:
                problems.append(f"{where}: target moved {step:.4f} m in {ticks} tick(s)")
            turn = _angle(target, last)
            turning_back = _angle(target, measured) < _angle(last, measured)
            if turn > ticks * limits.max_rotation_step + TOLERANCE and not turning_back:
                problems.append(f"{where}: target turned {turn:.4f} rad in {ticks} tick(s)")
        previous = (_stamp(state), target, state.mode)
    return problems


def _episode_problems(episode: RecordedEpisode) -> list[str]:
    arrays = {
        "proprio": episode.proprio,
        "base_action": episode.base_action,
        "executed_action": episode.executed_action,
        "residual": episode.residual,
        "reward": episode.reward,
    }
    where = f"stored episode {episode.meta.episode_id}"
    problems = [
        f"{where}: non-finite {name}" for name, array in arrays.items() if not np.isfinite(array).all()
    ]
    if not episode.done[-1]:
        problems.append(f"{where}: its last tick is not marked done")
    return problems


def stored_episodes(directory: Path) -> tuple[dict[int, RecordedEpisode], dict[Path, str]]:
    """The replay buffer's episodes by id, and the files it could not read (with why)."""
    with EpisodeStore(directory, writable=False) as store:
        episodes = {e.meta.episode_id: e for e in store.episodes()}
        return episodes, dict(store.problems)


def episode_losses(
    directory: Path, records: Sequence[EpisodeRecord], *, unwritten: Collection[int] = ()
) -> list[str]:
    """How the replay buffer's store disagrees with the supervisor's log (empty: it does not).

    Every episode the supervisor counted (not aborted) must be stored whole with its outcome,
    except those in ``unwritten`` (a write the test made fail: those must not be there at all,
    not even in part). Every stored file must load.
    """
    stored, damaged = stored_episodes(directory)
    problems = [f"damaged episode file {path}: {why}" for path, why in damaged.items()]
    for record in records:
        episode = stored.get(record.episode_id)
        if record.episode_id in unwritten:
            if episode is not None:
                problems.append(f"episode {record.episode_id} was stored although its write failed")
            continue
        if record.outcome == "aborted":
            continue
        if episode is None:
            problems.append(f"episode {record.episode_id} ({record.outcome}) is not stored")
            continue
        if episode.meta.outcome.name.lower() != record.outcome:
            problems.append(
                f"episode {record.episode_id}: stored as {episode.meta.outcome.name}, ended {record.outcome}"
            )
        problems += _episode_problems(episode)
    for episode in stored.values():
        problems += _episode_problems(episode)
    return sorted(set(problems))


def read_bags(
    directory: Path, *, cut: Collection[int] = (), writing: Collection[int] = ()
) -> tuple[dict[int, BagInfo], list[str]]:
    """Every episode bag under ``directory`` by episode id, and what is wrong with them.

    A bag must be complete and without problems, unless its episode is in ``cut`` (its recorder
    was killed or its disk failed while writing it): then it must still open, with its
    metadata, and give back messages in time order. The bags of episodes in ``writing`` (under way:
    the recorder has them open) are left out.
    """
    bags: dict[int, BagInfo] = {}
    problems: list[str] = []
    for path in sorted(p for p in directory.iterdir() if p.is_dir()):
        info = bag_info(path)
        meta = info.metadata
        if meta is None or meta.episode_id is None:
            problems.append(f"{path.name}: no episode metadata ({info.problems})")
            continue
        if meta.episode_id in writing:
            continue
        bags[meta.episode_id] = info
        if meta.episode_id not in cut:
            if not info.complete or info.problems:
                problems.append(f"{path.name}: incomplete or damaged: {info.problems}")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the cut is expected; BagReader warns about it
            reader = BagReader(path)
            stamps = [m.timestamp_ns for m in reader.messages()]
        if not stamps or stamps != sorted(stamps):
            problems.append(f"{path.name}: a cut bag that gives back {len(stamps)} messages, or out of order")
    return bags, problems
