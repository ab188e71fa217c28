"""Bags as the recorder writes them, made up without ROS (real CDR from the bag type store, written
with :class:`~pld_ros.data.bags.BagWriter`), for the conversion tests and benchmark.

One robot graph in :data:`NAMESPACE`: the arm driver's state at 20 Hz (ticks jitter by up to 2 ms
around their deadlines; a state arrives 1 ms after its tick, every seventh one 45 ms), the base
policy's action and the residual node's command for each tick (stamped with the tick's state,
arriving 3 and 5 ms after the tick), two cameras at 30 Hz with their own phases, the supervisor's
episode events, and its reset commands (source RESET) between episodes. Every value tells its tick
apart (``n`` counts the recording's ticks): the state ``n`` is :func:`state_of` (n), the base action
:func:`base_of` (n), the command :func:`command_of`; a camera's frame ``j`` is the image given for
it (default: :func:`tests.pld_ros.data.synthetic.frames` pattern ``j``, which lossy video keeps).

Episode bags hold what the recorder keeps of an episode: every message received from the STARTED
event to :data:`~pld_ros.data.recording.END_GRACE` after the ENDED event (:func:`record` leaves out
the recorder's pre-roll; :func:`graph_output` is what a real recorder is given); a session bag holds
all. Their metadata records the control rate, :data:`CONTROL_RATE`, unless told otherwise (a bag of
an older recorder).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from pld_ros.core.episode import EventKind, Outcome, Phase, RunMode, Source
from pld_ros.data.bags import CHUNK_PERIOD, BagWriter, EpisodeMetadata
from pld_ros.data.recording import BASE_ACTION_TYPE, END_GRACE, EVENT_TYPE
from tests.pld_ros.data.synthetic import frames
from tests.pld_ros.data.test_recording import header, message, serialize

NAMESPACE = "/rig"
ROBOT, PROFILE, PROMPT = "rig", "pick_cube", "pick up the red cube"
STATE, COMMAND = f"{NAMESPACE}/arm/state", f"{NAMESPACE}/arm/command"
BASE_ACTION, EVENTS = f"{NAMESPACE}/policy/base/action", f"{NAMESPACE}/episode/events"
STATE_TYPE, COMMAND_TYPE, IMAGE_TYPE = (
    "pld_msgs/msg/RobotState",
    "pld_msgs/msg/DeltaPoseCommand",
    "sensor_msgs/msg/Image",
)
CAMERAS = {"wrist": (64, 64), "side": (48, 80)}
"""Camera name -> (height, width) of its policy view."""
RAW_SIZE = (72, 96)
"""(height, width) of every camera's image_raw, when recorded."""
T0 = 1_750_000_000_000_000_000
TICK_NS = 50_000_000
CONTROL_RATE = 1e9 / TICK_NS
FRAME_NS = 33_333_333
CAMERA_PHASE_NS = {"wrist": 0, "side": 11_000_000}
RESET_TICKS = 3
"""Ticks of reset motion before each episode."""
MS = 1_000_000

Image = Callable[[str, int, tuple[int, int]], npt.NDArray[np.uint8]]
"""Frame ``j`` of a camera at a (height, width)."""


@dataclass(frozen=True)
class Run:
    """One episode as the graph ran it: ``ticks`` commanded ticks after the STARTED tick."""

    episode_id: int
    ticks: int = 12
    outcome: Outcome = Outcome.SUCCESS
    mode: RunMode = RunMode.PROBE_TAKEOVER
    probe_steps: int = 4
    human_from: int | None = None
    """Step from which a human's steps are executed (source HUMAN)."""
    command_started_tick: bool = False
    """The residual node commands the STARTED tick too (the tick's base action reached it after the
    event): the first frame is the tick whose state and camera frames came before the event."""


def camera_topic(camera: str, view: str = "policy_view") -> str:
    return f"{NAMESPACE}/cameras/{camera}/{view}"


def tick_stamp(n: int) -> int:
    """Header stamp of tick ``n``: its deadline plus a wake-up jitter of -2..2 ms."""
    return T0 + n * TICK_NS + ((n * 7) % 5 - 2) * MS


def frame_stamp(camera: str, j: int) -> int:
    return T0 + CAMERA_PHASE_NS[camera] + j * FRAME_NS


def newest_frame(camera: str, stamp_ns: int) -> int:
    """The camera's newest frame captured at or before ``stamp_ns``."""
    j = (stamp_ns - T0 - CAMERA_PHASE_NS[camera]) // FRAME_NS
    while frame_stamp(camera, j + 1) <= stamp_ns:
        j += 1
    return j


def state_of(n: int) -> npt.NDArray[np.float32]:
    """The proprioception of tick ``n``: position, quaternion (x, y, z, w), gripper closure."""
    angle = 0.01 * n
    return np.array(
        [1e-3 * n, 0.1, 0.3, 0.0, 0.0, math.sin(angle / 2), math.cos(angle / 2), (n % 10) / 10], np.float32
    )


def base_of(n: int) -> npt.NDArray[np.float32]:
    return np.array([1e-4 * n, 2e-4, -3e-4, 1e-3, 0.0, -1e-3, n % 2], np.float32)


def command_of(run: Run, step: int, n: int) -> tuple[Source, npt.NDArray[np.float32]]:
    """Who acted at ``step`` of ``run`` (tick ``n``) and the command sent."""
    base = base_of(n)
    if run.human_from is not None and step >= run.human_from:
        return Source.HUMAN, np.array([0.0, 0.0, 2e-3, 0.0, 0.0, 0.0, 1.0], np.float32)
    if run.mode is RunMode.BASE_ONLY or step < run.probe_steps:
        return Source.BASE, base
    return Source.COMBINED, base + np.array([1e-4 * (step % 3), -1e-4, 0.0, 0.0, 2e-4, 0.0, 0.0], np.float32)


@cache
def pattern(camera: str, j: int, size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """The default frames: moving patterns, different per camera."""
    image: npt.NDArray[np.uint8] = frames(1, *size, seed=list(CAMERAS).index(camera) * 0.37, start=j)[0]
    return image


def _time(stamp_ns: int) -> Any:
    return message("builtin_interfaces/msg/Time", sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)


def _vector(kind: str, *values: float) -> Any:
    names = ("x", "y", "z", "w")
    return message(kind, **{name: float(v) for name, v in zip(names, values, strict=False)})


def _state(n: int) -> bytes:
    values = state_of(n)
    pose = message(
        "geometry_msgs/msg/Pose",
        position=_vector("geometry_msgs/msg/Point", *values[:3]),
        orientation=_vector("geometry_msgs/msg/Quaternion", *values[3:7]),
    )
    joints = message(
        "sensor_msgs/msg/JointState",
        header=header(tick_stamp(n)),
        name=[],
        position=np.zeros(0, np.float64),
        velocity=np.zeros(0, np.float64),
        effort=np.zeros(0, np.float64),
    )
    state = message(
        STATE_TYPE,
        header=header(tick_stamp(n)),
        joints=joints,
        ee_pose=pose,
        ee_target=pose,
        gripper_width=0.08,
        gripper_closure=float(values[7]),
        gripper_grasped=False,
        mode=1,
        error="",
    )
    return serialize(STATE_TYPE, state)


def _base_action(n: int, episode: int) -> bytes:
    action = message(
        BASE_ACTION_TYPE,
        header=header(tick_stamp(n)),
        episode_id=episode,
        action=base_of(n),
        fresh=True,
        age=0.01,
        chunk_index=0,
        chunk_id=n,
        chunks_averaged=1,
        policy="onnx:pick.onnx",
    )
    return serialize(BASE_ACTION_TYPE, action)


def _command(n: int, episode: int, step: int, source: Source, action: npt.NDArray[np.float32]) -> bytes:
    command = message(
        COMMAND_TYPE,
        header=header(tick_stamp(n)),
        translation=_vector("geometry_msgs/msg/Vector3", *action[:3]),
        rotation=_vector("geometry_msgs/msg/Vector3", *action[3:6]),
        gripper=float(action[6]),
        source=message("pld_msgs/msg/ActionSource", value=int(source)),
        episode_id=episode,
        step=step,
        base_action_age=0.01,
    )
    return serialize(COMMAND_TYPE, command)


def _event(kind: EventKind, run: Run, n: int, step: int, phase: Phase, outcome: Outcome) -> bytes:
    event = message(
        EVENT_TYPE,
        header=header(tick_stamp(n)),
        robot_id=ROBOT,
        episode_id=run.episode_id,
        event=int(kind),
        phase=message("pld_msgs/msg/EpisodePhase", value=int(phase)),
        outcome=message("pld_msgs/msg/EpisodeOutcome", value=int(outcome)),
        mode=message("pld_msgs/msg/RunMode", value=int(run.mode)),
        step=step,
        probe_steps=run.probe_steps,
        reason=outcome.name.lower() if outcome is not Outcome.NONE else "",
        stage="",
    )
    return serialize(EVENT_TYPE, event)


def _image(camera: str, j: int, size: tuple[int, int], image: Image) -> bytes:
    pixels = image(camera, j, size)
    height, width = size
    value = message(
        IMAGE_TYPE,
        header=message("std_msgs/msg/Header", stamp=_time(frame_stamp(camera, j)), frame_id=camera),
        height=height,
        width=width,
        encoding="rgb8",
        is_bigendian=0,
        step=3 * width,
        data=pixels.reshape(-1),
    )
    return serialize(IMAGE_TYPE, value)


@dataclass
class Recording:
    """What the graph published, in the order the recorder received it."""

    messages: list[tuple[str, int, bytes]]
    """(topic, receive time, CDR)."""
    ticks: dict[int, list[int]]
    """Episode id -> the recording's ticks ``n`` of its commands, in order."""
    spans: dict[int, tuple[int, int]]
    """Episode id -> receive times of its STARTED and ENDED events."""


def graph_output(
    runs: Sequence[Run],
    *,
    image: Image = pattern,
    sizes: Mapping[str, tuple[int, int]] = CAMERAS,
    image_raw: bool = False,
) -> Recording:
    """Everything the graph publishes while it runs ``runs`` one after the other (module doc);
    ``sizes``: the cameras' policy views; ``image_raw``: also their :data:`RAW_SIZE` images."""
    messages: list[tuple[str, int, bytes]] = []
    ticks: dict[int, list[int]] = {}
    spans: dict[int, tuple[int, int]] = {}
    n = 0

    def tick(episode: int, command: tuple[int, Source, npt.NDArray[np.float32]] | None) -> None:
        stamp = tick_stamp(n)
        # Every seventh state is held up on its way, past its command and later camera frames.
        messages.append((STATE, stamp + (45 if n % 7 == 3 else 1) * MS, _state(n)))
        messages.append((BASE_ACTION, stamp + 3 * MS, _base_action(n, episode)))
        if command is not None:
            step, source, action = command
            messages.append((COMMAND, stamp + 5 * MS, _command(n, episode, step, source, action)))

    for run in runs:
        for _ in range(RESET_TICKS):
            tick(run.episode_id, (0, Source.RESET, np.zeros(7, np.float32)))
            n += 1
        # STARTED at a tick; the residual node commands from the next one (it learns of the start
        # after the base action of the STARTED tick has gone by).
        started = tick_stamp(n) + 2 * MS
        messages.append((EVENTS, started, _event(EventKind.STARTED, run, n, 0, Phase.PROBING, Outcome.NONE)))
        if not run.command_started_tick:
            tick(run.episode_id, None)
            n += 1
        ticks[run.episode_id] = []
        for step in range(run.ticks):
            source, action = command_of(run, step, n)
            tick(run.episode_id, (step, source, action))
            ticks[run.episode_id].append(n)
            if step == run.probe_steps and run.mode is RunMode.PROBE_TAKEOVER:
                changed = _event(EventKind.PHASE_CHANGED, run, n, step, Phase.TAKEOVER, Outcome.NONE)
                messages.append((EVENTS, tick_stamp(n) + 6 * MS, changed))
            n += 1
        # n: the tick at which the supervisor sees the end
        tick(run.episode_id, None)
        ended = tick_stamp(n) + 2 * MS
        messages.append((EVENTS, ended, _event(EventKind.ENDED, run, n, run.ticks, Phase.DONE, run.outcome)))
        spans[run.episode_id] = (started, ended)
        n += 1
    for _ in range(RESET_TICKS):
        tick(runs[-1].episode_id + 1, (0, Source.RESET, np.zeros(7, np.float32)))
        n += 1
    end = tick_stamp(n)
    views = {"policy_view": sizes, "image_raw": dict.fromkeys(sizes, RAW_SIZE) if image_raw else {}}
    for view, view_sizes in views.items():
        for camera, size in view_sizes.items():
            j = 0
            while (stamp := frame_stamp(camera, j)) < end:
                messages.append((camera_topic(camera, view), stamp + 4 * MS, _image(camera, j, size, image)))
                j += 1
    messages.sort(key=lambda m: m[1])
    return Recording(messages, ticks, spans)


TOPICS = {STATE: STATE_TYPE, COMMAND: COMMAND_TYPE, BASE_ACTION: BASE_ACTION_TYPE, EVENTS: EVENT_TYPE}


def write_bag(
    path: Path,
    messages: Sequence[tuple[str, int, bytes]],
    metadata: Sequence[tuple[int, EpisodeMetadata]],
    *,
    drop: Collection[str] = (),
    chunk_period: float = CHUNK_PERIOD,
) -> Path:
    """One bag of ``messages`` (without the topics in ``drop``) and ``metadata`` (receive time,
    metadata) messages, as the recorder writes it."""
    types = dict(TOPICS)
    types.update((topic, IMAGE_TYPE) for topic, _, _ in messages if "/cameras/" in topic)
    pending = sorted(metadata, key=lambda m: m[0])
    with BagWriter(path, chunk_period=chunk_period) as bag:
        for topic, msgtype in types.items():
            if topic not in drop:
                bag.add_topic(topic, msgtype)
        for topic, stamp, data in messages:
            while pending and pending[0][0] <= stamp:
                bag.write_metadata(pending[0][1], pending.pop(0)[0])
            if topic not in drop:
                bag.write(topic, stamp, data)
        for stamp, meta in pending:
            bag.write_metadata(meta, stamp)
    return path


def record(
    directory: Path,
    runs: Sequence[Run],
    *,
    split: Literal["episode", "session"] = "episode",
    drop: Collection[str] = (),
    chunk_period: float = CHUNK_PERIOD,
    prompt: str = PROMPT,
    image: Image = pattern,
    sizes: Mapping[str, tuple[int, int]] = CAMERAS,
    image_raw: bool = False,
    control_rate: float | None = CONTROL_RATE,
) -> tuple[list[Path], Recording]:
    """The bags the recorder leaves in ``directory`` after ``runs``; what the graph published
    (cameras: :func:`graph_output`). ``control_rate``: recorded in the metadata (None: a bag of a
    recorder that did not record it)."""
    recording = graph_output(runs, image=image, sizes=sizes, image_raw=image_raw)
    identity = EpisodeMetadata(robot_id=ROBOT, profile=PROFILE, prompt=prompt, control_rate=control_rate)
    last = recording.messages[-1][1]
    if split == "session":
        path = directory / f"{ROBOT}-session"
        bag = write_bag(
            path, recording.messages, [(T0, identity), (last, identity)], drop=drop, chunk_period=chunk_period
        )
        return [bag], recording
    bags = []
    for index, run in enumerate(runs):
        started, ended = recording.spans[run.episode_id]
        opened = replace(identity, episode_id=run.episode_id, mode=run.mode, probe_steps=run.probe_steps)
        closed = replace(opened, outcome=run.outcome, reason=run.outcome.name.lower())
        # Closed END_GRACE after the ENDED event, or when the next episode starts if that is sooner.
        close = ended + int(END_GRACE * 1e9)
        if index + 1 < len(runs):
            close = min(close, recording.spans[runs[index + 1].episode_id][0] - 1)
        kept = [m for m in recording.messages if started <= m[1] <= close]
        metadata = [(started, opened), (ended, closed), (kept[-1][1], closed)]
        path = directory / f"{ROBOT}-{run.episode_id:06d}"
        bags.append(write_bag(path, kept, metadata, drop=drop, chunk_period=chunk_period))
    return bags, recording
