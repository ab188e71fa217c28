"""Recorded bags as SFT episodes, without ROS: which episodes a bag holds, and every stream of each
aligned to its control ticks, ready for the dataset writers (:mod:`pld_ros.data.convert`).

Topics (as the recorder records them, :func:`pld_ros.data.recording.default_topics`, under the
graph's namespace): the control arm's ``<arm>/state`` (``RobotState``) and ``<arm>/command``
(``DeltaPoseCommand``), ``policy/base/action`` (``BaseAction``) and ``cameras/<name>/policy_view``
(or ``image_raw``) of each camera are required: a bag without one of them is refused with a
ValueError naming the missing topics and the bag. ``episode/events`` tells the episodes apart.

Episodes. Each STARTED event opens an episode's window and its ENDED event closes it (a STARTED
without an ENDED runs until the next STARTED or the end of the bag); an episode bag
(``recording.split: episode``) holds one window, a session bag one per episode it recorded. Without
events (none recorded, or none readable) the commands' ``episode_id`` tells the episodes apart, and
that is reported. Mode, k, outcome and reason come from the events, else from the bag's metadata
when it names the episode; the prompt and robot from the metadata (the prompt can be overridden).
Success is the SUCCESS outcome; the origin is HUMAN when a human's steps were executed, else follows
the run mode (base_only: BASE, probe_takeover: PLD, residual_only: RESIDUAL).

Alignment: one frame per control tick. The arm driver is the graph's clock: it publishes the arm
state once per tick, the base policy answers it with the tick's ``BaseAction`` and the residual
node with the tick's ``DeltaPoseCommand``, both stamped with the state's header stamp, and the
driver applies the command at the next tick (docs/policy_layer.md). So the frames of an episode are
its commands (``source`` not RESET, the episode's ``episode_id``, stamped inside its window) in
time order, and frame ``t``, for the command of tick ``t``, holds:

- ``action[t]``: that command, the action executed from the tick's observation;
- ``state[t]``: the arm state with the same header stamp, the observation the command was computed
  from (:func:`~pld_ros.core.observation.proprio_vector` of the measured pose and gripper);
- ``base_action[t]``: the base action with the same stamp, and ``residual[t] = action[t] -
  base_action[t]``, which is zero where the base policy acted alone (source BASE: the residual node
  sends the base action itself, float32 values that survive the command's float64 exactly);
- ``cameras[name][t]``: the newest frame of the camera captured (header stamp) at or before the
  tick: what a policy acting on the tick can have seen, never a later frame. One older than
  ``max_camera_age`` counts as missing (a stalled camera). The running graph may have used a frame
  captured in the few ms between the tick and its processing; a dataset frame is never newer.

Pairing goes by stamp, not by arrival: the command of tick ``t`` arrives after the state of tick
``t``, so "the newest command at or before each tick" would pair every state with the previous
tick's command. And ticks come from the commands, not from a clock: the bag's clock is ROS time, on
which a simulation slower than real time stretches the ticks (the driver ticks on simulated time),
so a fixed-rate grid on it would repeat ticks; real ticks jitter by milliseconds around their
deadlines, which makes a grid lose and repeat ticks near its edges too. The frames' timestamps are
the control-rate grid, the first tick's stamp plus ``t / fps``; ``fps`` is the argument, else the
control rate the bag's metadata records (the profile's ``supervisor.control_rate``), else, for a bag
recorded before the metadata held it, :data:`DEFAULT_FPS` (reported). Ticks whose spacing on the
bag's clock differs from ``1 / fps`` by more than :data:`RATE_MISMATCH` are reported (a wrong fps,
or a simulation slower than real time).

What cannot be read is left out and reported, the rest converted: a tick lacking one of its parts
(state, base action, a camera frame: a damaged chunk, a message that does not deserialize) is no
frame, and a jump in the commands' step numbers shows ticks whose commands were lost. The episode is
cut at such a hole into pieces of consecutive ticks, each its own episode (``extra["piece"]``), so
that no frame is followed by one that did not follow it on the robot; only a piece that ends with
the episode's last tick keeps its success. Every loss is reported: :attr:`BagEpisodes.problems`, a
:class:`~pld_ros.data.bags.BagWarning` each (besides the bag reader's own), and in
``info.extra["problems"]`` of the episodes concerned (with the bag reader's findings, which it
cannot place in time), which the dataset keeps. ``info.extra`` also names the bag, profile, mode,
outcome, reason, k, policy versions and the steps the episode (or piece) spans.
"""

from __future__ import annotations

import bisect
import json
import warnings
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from rosbags.serde import SerdeError

from pld_ros.core.episode import EventKind, Outcome, RunMode, Source
from pld_ros.core.messages import action_of, image_array, proprio_of
from pld_ros.core.observation import ACTION_DIM, PROPRIO_DIM, Float32Array
from pld_ros.data.bags import BagReader, BagWarning, EpisodeMetadata, typestore
from pld_ros.data.recording import BASE_ACTION_TYPE, EVENT_TYPE, IMAGE_TYPE, STATE_TYPE
from pld_ros.data.sft_episode import (
    ACTION_NAMES,
    ORIGIN_OF_MODE,
    STATE_NAMES,
    EpisodeInfo,
    Origin,
    SftEpisode,
)

View = Literal["policy_view", "image_raw"]
VIEWS: tuple[View, ...] = ("policy_view", "image_raw")
"""The camera topics a dataset can take its images from (docs/topics.md)."""
COMMAND_TYPE = "pld_msgs/msg/DeltaPoseCommand"
DEFAULT_FPS = 20
"""Hz: the control rate of a bag whose metadata does not record it (bags recorded before it did)
when none is given: the default ``supervisor.control_rate``."""
FpsSource = Literal["given", "metadata", "default"]
"""Where :attr:`BagEpisodes.fps` came from: the argument, the bag's metadata, :data:`DEFAULT_FPS`."""
MAX_CAMERA_AGE = 0.5
"""s: a camera frame older than this at a tick counts as missing there (the default
``cameras.<name>.stale_after``, after which the supervisor aborts an episode for a stale camera)."""
RATE_MISMATCH = 0.2
"""Fraction of ``1 / fps`` by which the ticks' median spacing on the bag's clock may differ from it
before that is reported: jitter stays far below it; another control rate (10 Hz ticks at fps 20) and
a simulation below 0.83x real time exceed it."""
RETAIN = 1.0
"""s of the bag after a tick by which its command and camera frames have been recorded (they come
within milliseconds in a running graph); its frames are kept until then, and an episode is converted
this long after its end."""
RETAIN_NS = int(RETAIN * 1e9)
MAX_END_GAP_TICKS = 2.0
"""Tick intervals between an episode's last command and its ENDED event beyond which the end of the
episode counts as lost (the supervisor ends an episode at most one tick after the last command)."""


@dataclass(frozen=True)
class BagTopics:
    """The topics of a bag that the conversion reads (fully qualified names)."""

    state: str
    command: str
    base_action: str
    cameras: Mapping[str, str]
    """Camera name -> image topic, in the episodes' camera order."""
    events: str | None
    """None: the bag has no episode events."""


def find_topics(
    path: Path,
    topics: Mapping[str, str],
    *,
    arm: str | None = None,
    cameras: Sequence[str] | None = None,
    view: View = "policy_view",
) -> BagTopics:
    """The converter's topics among a bag's ``topics`` (name -> message type).

    ``arm``: the arm whose ``<arm>/state`` ticks the control loop (None: the bag's only arm).
    ``cameras``: camera names in the order wanted (None: every camera recorded with ``view``,
    sorted by name). Raises ValueError naming ``path`` and every missing topic.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    states = sorted(
        name
        for name, msgtype in topics.items()
        if msgtype == STATE_TYPE and name.endswith("/state") and (arm is None or _parts(name)[-2:-1] == [arm])
    )
    if len(states) > 1:
        arms = ", ".join(_parts(name)[-2] for name in states)
        raise ValueError(f"{path}: several arms record a state ({arms}); choose the control arm with arm=")
    if not states:
        wanted = f"{arm}/state" if arm is not None else "<arm>/state"
        raise ValueError(f"{path}: missing topic {wanted} ({STATE_TYPE}); the bag has: {_listing(topics)}")
    state = states[0]
    arm_name = _parts(state)[-2]
    prefix = state[: -len(f"{arm_name}/state")]
    required = {
        f"{prefix}{arm_name}/command": COMMAND_TYPE,
        f"{prefix}policy/base/action": BASE_ACTION_TYPE,
    }
    if cameras is None:
        found = sorted(
            name
            for name, msgtype in topics.items()
            if msgtype == IMAGE_TYPE
            and name.startswith(f"{prefix}cameras/")
            and name.endswith(f"/{view}")
            and len(_parts(name[len(prefix) :])) == 3
        )
        camera_topics = {_parts(name)[-2]: name for name in found}
        if not camera_topics:
            required[f"{prefix}cameras/<name>/{view}"] = IMAGE_TYPE
    else:
        camera_topics = {name: f"{prefix}cameras/{name}/{view}" for name in cameras}
        required.update(dict.fromkeys(camera_topics.values(), IMAGE_TYPE))
    missing = [f"{name} ({msgtype})" for name, msgtype in required.items() if topics.get(name) != msgtype]
    if missing:
        raise ValueError(f"{path}: missing topic(s) {', '.join(missing)}; the bag has: {_listing(topics)}")
    events = f"{prefix}episode/events"
    return BagTopics(
        state=state,
        command=f"{prefix}{arm_name}/command",
        base_action=f"{prefix}policy/base/action",
        cameras=camera_topics,
        events=events if topics.get(events) == EVENT_TYPE else None,
    )


def _parts(name: str) -> list[str]:
    return [part for part in name.split("/") if part]


def _listing(topics: Mapping[str, str]) -> str:
    return ", ".join(f"{name} ({msgtype})" for name, msgtype in sorted(topics.items())) or "no topics"


# ---- messages ------------------------------------------------------------------------------------


def _stamp_ns(message: Any) -> int:
    stamp = message.header.stamp
    return int(stamp.sec) * 10**9 + int(stamp.nanosec)


@dataclass(frozen=True)
class _Event:
    kind: EventKind
    episode_id: int
    stamp_ns: int
    robot_id: str
    mode: RunMode
    outcome: Outcome
    reason: str
    probe_steps: int


@dataclass(frozen=True)
class _Command:
    stamp_ns: int
    episode_id: int
    step: int
    source: Source
    action: Float32Array


@dataclass
class _Window:
    """An episode as its events bound it; a None bound is open."""

    episode_id: int
    start_ns: int | None
    end_ns: int | None
    started: _Event | None = None
    ended: _Event | None = None


@dataclass
class _Plan:
    """One episode's ticks (its commands) with their state, base action and camera frames."""

    window: _Window
    stamps: npt.NDArray[np.int64]
    steps: npt.NDArray[np.int64]
    sources: list[Source]
    actions: Float32Array
    states: Float32Array
    bases: Float32Array
    valid: npt.NDArray[np.bool_]
    """The tick has every part."""
    images: dict[str, npt.NDArray[np.uint8]] = field(default_factory=dict)
    lost: Counter[str] = field(default_factory=Counter)
    """Why ticks were left out: reason -> ticks."""
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.stamps)


class _FramePicker:
    """One camera's frames matched to the ticks while the bag streams by: a tick gets the newest
    frame captured at or before it, once a later frame has come (or :meth:`settle` says that none
    will)."""

    def __init__(self, topic: str, max_age_ns: int) -> None:
        self.topic = topic
        self.max_age_ns = max_age_ns
        self._stamps: list[int] = []
        self._images: list[npt.NDArray[np.uint8]] = []
        self._pending: deque[int] = deque()
        self.picks: dict[int, npt.NDArray[np.uint8] | str] = {}
        """Tick -> its frame (a view of the message), or why it has none."""
        self.out_of_order = 0

    def tick(self, tick_ns: int) -> None:
        if self._stamps and self._stamps[-1] > tick_ns:
            self._resolve(tick_ns)  # a later frame is here already (this state came late)
        else:
            self._pending.append(tick_ns)

    def frame(self, stamp_ns: int, image: npt.NDArray[np.uint8]) -> None:
        if self._stamps and stamp_ns < self._stamps[-1]:
            self.out_of_order += 1  # older than a frame already seen: the ticks it could serve are done
            return
        self.settle(stamp_ns)
        self._stamps.append(stamp_ns)
        self._images.append(image)
        # Keep what a tick still on its way could need: RETAIN_NS beyond the age limit.
        old = bisect.bisect_left(self._stamps, stamp_ns - self.max_age_ns - RETAIN_NS)
        if old > 0:
            del self._stamps[:old], self._images[:old]

    def settle(self, before_ns: float) -> None:
        """Resolve the ticks stamped before ``before_ns`` with the frames there are."""
        while self._pending and self._pending[0] < before_ns:
            self._resolve(self._pending.popleft())

    def _resolve(self, tick_ns: int) -> None:
        index = bisect.bisect_right(self._stamps, tick_ns) - 1
        if index < 0:
            self.picks[tick_ns] = f"no frame of {self.topic} before it in the bag"
        elif tick_ns - self._stamps[index] > self.max_age_ns:
            self.picks[tick_ns] = f"the newest frame of {self.topic} older than {self.max_age_ns * 1e-9:g} s"
        else:
            self.picks[tick_ns] = self._images[index]


@dataclass
class _Pass:
    """What the pass over a bag has gathered so far."""

    pickers: dict[str, _FramePicker]
    """Camera name -> its frames."""
    states: dict[int, Float32Array | None] = field(default_factory=dict)
    bases: dict[int, Float32Array | None] = field(default_factory=dict)
    commands: dict[int, list[_Command]] = field(default_factory=dict)
    """Episode id -> its commands (RESET ones left out), in arrival order."""
    commanded: set[int] = field(default_factory=set)
    recent: deque[int] = field(default_factory=deque)
    """Ticks whose frames are kept until it is clear whether a command needs them."""
    windows: list[_Window] = field(default_factory=list)
    open: _Window | None = None
    converted: int = 0
    """Windows converted so far (the first ones)."""
    used: int = 0
    """Commands converted so far."""
    failed: Counter[str] = field(default_factory=Counter)
    """Topic -> messages that did not deserialize or hold values this code does not know."""
    yielded: int = 0

    def forget(self, before_ns: int) -> None:
        """Drop the frames of the ticks before ``before_ns`` that no command asked for (resets)."""
        while self.recent and self.recent[0] < before_ns:
            tick = self.recent.popleft()
            if tick not in self.commanded:
                for picker in self.pickers.values():
                    picker.picks.pop(tick, None)


# ---- the episodes of a bag -----------------------------------------------------------------------


class BagEpisodes:
    """The episodes of one bag (module doc), read in one pass when iterated (once). An episode (or
    piece) is yielded once the bag has gone :data:`RETAIN` s past its end, and its frames are
    dropped then: the images of one episode are in memory at a time (twice, while they are copied
    into its arrays), except in a bag without episode events, whose episodes are known at its end.

    ``fps``: the control rate (None: the one the bag's metadata records, else :data:`DEFAULT_FPS`,
    reported; a given one that differs from the recorded one is reported too); ``cameras``,
    ``view``, ``arm``: see :func:`find_topics`; ``prompt``: the task of every episode (None: the
    bag's metadata). Raises :class:`~pld_ros.data.bags.BagError` for a path that is no bag,
    ValueError for a bag without the required topics or without a prompt, and, when iterated, for
    one without a tick to convert or with images that are not rgb8.
    """

    def __init__(
        self,
        path: Path,
        *,
        fps: float | None = None,
        cameras: Sequence[str] | None = None,
        view: View = "policy_view",
        arm: str | None = None,
        prompt: str | None = None,
        max_camera_age: float = MAX_CAMERA_AGE,
    ) -> None:
        self.path = path
        if fps is not None and not fps > 0.0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.max_camera_age = max_camera_age
        self._reader = BagReader(path, store=typestore())
        # The bag's own definitions: a bag recorded before one of our messages changed still reads.
        self._store = self._reader.typestore
        self.metadata: EpisodeMetadata | None = self._reader.metadata
        """The bag's episode metadata (the last metadata message), if any."""
        recorded = self.metadata.control_rate if self.metadata is not None else None
        self.fps: float
        """Hz: the control rate, the frames' rate."""
        self.fps_source: FpsSource
        if fps is not None:
            self.fps, self.fps_source = float(fps), "given"
        elif recorded is not None:
            self.fps, self.fps_source = recorded, "metadata"
        else:
            self.fps, self.fps_source = float(DEFAULT_FPS), "default"
        self.topics = find_topics(
            path, {t.name: t.msgtype for t in self._reader.topics}, arm=arm, cameras=cameras, view=view
        )
        task = prompt if prompt is not None else (self.metadata.prompt if self.metadata is not None else "")
        if not task.strip():
            raise ValueError(f"{path}: no prompt in the bag's metadata; give one (--prompt)")
        self.task = task
        self._notes: list[str] = []
        self._bag_notes: list[str] = []  # those of no one episode
        self._iterated = False
        if self.fps_source == "default":
            self._note(
                f"the bag's metadata does not record the control rate (a bag recorded before it did): "
                f"{DEFAULT_FPS} Hz assumed; give the rate (fps, --fps) if it was another"
            )
        elif recorded is not None and self.fps != recorded:
            self._note(
                f"fps {self.fps:g} given; the bag's metadata records a control rate of {recorded:g} Hz"
            )

    @property
    def problems(self) -> list[str]:
        """What could not be read or converted, the bag reader's findings included (all of it once
        the episodes have been read)."""
        return list(dict.fromkeys([*self._reader.problems, *self._notes]))

    def _note(self, text: str, plan: _Plan | None = None) -> None:
        text = f"{self.path}: {text}"
        self._notes.append(text)
        (plan.notes if plan is not None else self._bag_notes).append(text)
        warnings.warn(text, BagWarning, stacklevel=2)

    # -- the pass --------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[SftEpisode]:
        """The episodes in the order they ended; a second iteration raises RuntimeError (open the
        bag again)."""
        if self._iterated:
            raise RuntimeError(f"{self.path}: the episodes were read already")
        self._iterated = True
        topics = self.topics
        camera_of = {topic: name for name, topic in topics.cameras.items()}
        max_age_ns = int(self.max_camera_age * 1e9)
        run = _Pass({name: _FramePicker(topic, max_age_ns) for name, topic in topics.cameras.items()})
        wanted = {topics.state, topics.command, topics.base_action, *camera_of}
        if topics.events is not None:
            wanted.add(topics.events)
        for raw in self._reader.messages(wanted):
            try:
                message: Any = self._store.deserialize_cdr(raw.data, raw.msgtype)
            except SerdeError:
                run.failed[raw.topic] += 1
                continue
            if raw.topic in camera_of:
                self._on_image(run.pickers[camera_of[raw.topic]], message, run.failed)
            elif raw.topic == topics.state:
                self._on_state(run, message)
            elif raw.topic == topics.base_action:
                action = np.asarray(message.action, dtype=np.float32)
                run.bases.setdefault(_stamp_ns(message), action if action.shape == (ACTION_DIM,) else None)
            elif raw.topic == topics.command:
                self._on_command(run, message, raw.topic)
            else:
                self._on_event(run, message, raw.topic)
            # RETAIN after a tick, its command and frames are in: what it belongs to is known.
            horizon = raw.timestamp_ns - RETAIN_NS
            run.forget(horizon)
            while run.converted < len(run.windows):
                end = run.windows[run.converted].end_ns
                if end is None or end >= horizon:
                    break
                yield from self._convert(run, run.windows[run.converted])
                run.converted += 1
        yield from self._end(run)

    def _on_image(self, picker: _FramePicker, message: Any, failed: Counter[str]) -> None:
        if message.encoding != "rgb8":
            raise ValueError(
                f"{self.path}: {picker.topic} has {message.encoding!r} images; the converter reads rgb8 "
                "(as the project's cameras publish them)"
            )
        try:
            image = image_array(message)
        except ValueError:  # sizes that do not fit the data: a damaged message
            failed[picker.topic] += 1
        else:
            picker.frame(_stamp_ns(message), image)

    def _on_state(self, run: _Pass, message: Any) -> None:
        stamp = _stamp_ns(message)
        if stamp in run.states:
            return  # the same tick again
        try:
            run.states[stamp] = proprio_of(message)
        except ValueError:  # no valid orientation: a disconnected arm reports a zero pose
            run.states[stamp] = None
        for picker in run.pickers.values():
            picker.tick(stamp)
        run.recent.append(stamp)

    def _on_command(self, run: _Pass, message: Any, topic: str) -> None:
        try:
            source = Source(int(message.source.value))
        except ValueError:
            run.failed[topic] += 1
            return
        if source is Source.RESET:  # the supervisor's reset motion: no episode's tick
            return
        stamp = _stamp_ns(message)
        command = _Command(stamp, int(message.episode_id), int(message.step), source, action_of(message))
        run.commands.setdefault(command.episode_id, []).append(command)
        run.commanded.add(stamp)

    def _on_event(self, run: _Pass, message: Any, topic: str) -> None:
        """Open and close the episodes' windows."""
        try:
            event = _event(message, _stamp_ns(message))
        except ValueError:  # a kind, outcome or mode this code does not know
            run.failed[topic] += 1
            return
        current = run.open
        if event.kind is EventKind.STARTED:
            if current is not None:
                current.end_ns = event.stamp_ns - 1
                self._note(
                    f"episode {current.episode_id} has no ENDED event before episode "
                    f"{event.episode_id} started: outcome unknown"
                )
            run.open = _Window(event.episode_id, event.stamp_ns, None, started=event)
            run.windows.append(run.open)
        elif event.kind is EventKind.ENDED:
            if current is not None and current.episode_id == event.episode_id:
                current.end_ns, current.ended = event.stamp_ns, event
            else:
                if current is not None:
                    current.end_ns = event.stamp_ns - 1
                # Its STARTED event was not read (lost, or before the recording began).
                run.windows.append(_Window(event.episode_id, None, event.stamp_ns, ended=event))
            run.open = None

    def _end(self, run: _Pass) -> Iterator[SftEpisode]:
        """What is left at the end of the bag: the last windows, or without any events the
        commands' episodes, then what was not converted."""
        for picker in run.pickers.values():
            picker.settle(np.inf)  # no later frame comes
        if run.open is not None:
            self._note(f"episode {run.open.episode_id}: no ENDED event in the bag: outcome unknown")
        if not run.windows:
            self._note(
                "no episode events in the bag: the whole bag is read, its episodes told apart by their "
                "commands' episode ids; outcome and mode from the bag's metadata where it names the episode"
            )
            run.windows = [_Window(episode, None, None) for episode in sorted(run.commands)]
        for window in run.windows[run.converted :]:
            yield from self._convert(run, window)
        unused = sum(len(commands) for commands in run.commands.values()) - run.used
        if unused:
            self._note(f"{unused} command(s) outside every episode's window; left out")
        for topic, count in sorted(run.failed.items()):
            self._note(f"{count} message(s) on {topic} could not be read; left out")
        for picker in run.pickers.values():
            if picker.out_of_order:
                self._note(
                    f"{picker.out_of_order} frame(s) on {picker.topic} older than one before; left out"
                )
        if not run.yielded:
            raise ValueError(f"{self.path}: no tick could be converted ({'; '.join(self.problems)})")

    # -- an episode ------------------------------------------------------------------------------------

    def _convert(self, run: _Pass, window: _Window) -> Iterator[SftEpisode]:
        """The episode of ``window``, its frames then dropped."""
        commands = sorted(
            (
                c
                for c in run.commands.get(window.episode_id, [])
                if (window.start_ns is None or c.stamp_ns >= window.start_ns)
                and (window.end_ns is None or c.stamp_ns <= window.end_ns)
            ),
            key=lambda c: c.stamp_ns,
        )
        if not commands:
            self._note(f"episode {window.episode_id}: no command recorded in its window; nothing to convert")
            return
        run.used += len(commands)
        plan = self._plan(run, window, commands)
        for camera, picker in run.pickers.items():
            picker.settle(int(plan.stamps[-1]) + 1)  # no frame captured before them comes any more
            missing = f"no frame of {picker.topic} kept for it (its command came over {RETAIN:g} s late)"
            picks = [picker.picks.pop(int(stamp), missing) for stamp in plan.stamps]
            shape = next((pick.shape for pick in picks if not isinstance(pick, str)), (0, 0, 3))
            images = np.empty((len(plan), *shape), dtype=np.uint8)
            for row, pick in enumerate(picks):
                if isinstance(pick, str):
                    if int(plan.stamps[row]) not in run.states:
                        continue  # frames are matched to states: it is left out for the state already
                    plan.lost[pick] += 1
                    plan.valid[row] = False
                elif pick.shape != shape:
                    plan.lost[f"a frame of {picker.topic} of another size than the episode's"] += 1
                    plan.valid[row] = False
                else:
                    images[row] = pick
            plan.images[camera] = images
        for stamp in plan.stamps:
            run.commanded.discard(int(stamp))
        for episode in self._episodes(plan):
            run.yielded += 1
            yield episode

    def _plan(self, run: _Pass, window: _Window, commands: list[_Command]) -> _Plan:
        """The ticks of ``commands`` with their states and base actions; the cameras come later."""
        count = len(commands)
        plan = _Plan(
            window=window,
            stamps=np.array([c.stamp_ns for c in commands], dtype=np.int64),
            steps=np.array([c.step for c in commands], dtype=np.int64),
            sources=[c.source for c in commands],
            actions=np.stack([c.action for c in commands]),
            states=np.zeros((count, PROPRIO_DIM), dtype=np.float32),
            bases=np.zeros((count, ACTION_DIM), dtype=np.float32),
            valid=np.ones(count, dtype=bool),
        )
        for row, command in enumerate(commands):
            state, base = run.states.get(command.stamp_ns), run.bases.get(command.stamp_ns)
            finite = bool(np.all(np.isfinite(command.action)))
            if state is None:
                plan.lost[f"no readable arm state stamped as its command ({self.topics.state})"] += 1
            if base is None:
                plan.lost[f"no readable base action stamped as its command ({self.topics.base_action})"] += 1
            if not finite:
                plan.lost["a command with NaN or infinite values"] += 1
            if state is None or base is None or not finite:
                plan.valid[row] = False
            else:
                plan.states[row], plan.bases[row] = state, base
        repeated = np.flatnonzero(np.diff(plan.stamps) == 0)
        if len(repeated):
            plan.valid[repeated + 1] = False
            plan.lost["a second command for the same tick"] += len(repeated)
        intervals = np.diff(plan.stamps)[np.diff(plan.steps) == 1] * 1e-9
        if len(intervals):
            median, period = float(np.median(intervals)), 1.0 / self.fps
            if abs(median - period) > RATE_MISMATCH * period:
                self._note(
                    f"episode {window.episode_id}: ticks came every {median * 1e3:.1f} ms on the bag's "
                    f"clock, fps {self.fps:g} means {period * 1e3:.1f} ms (a wrong fps, or a simulation "
                    "slower than real time); frames are one per tick",
                    plan,
                )
        return plan

    def _episodes(self, plan: _Plan) -> list[SftEpisode]:
        """The plan's readable ticks as episodes: one, or one per piece of consecutive ticks."""
        window = plan.window
        for reason, count in sorted(plan.lost.items()):
            self._note(f"episode {window.episode_id}: {count} tick(s) left out: {reason}", plan)
        # A new piece starts where a kept tick does not directly follow the one kept before it.
        kept = np.flatnonzero(plan.valid)
        cuts = np.flatnonzero((np.diff(kept) != 1) | (np.diff(plan.steps[kept]) != 1)) + 1
        pieces = [(int(run[0]), int(run[-1]) + 1) for run in np.split(kept, cuts) if len(run)]
        if len(pieces) > 1:
            spans = ", ".join(f"{plan.steps[a]}-{plan.steps[b - 1]}" for a, b in pieces)
            self._note(
                f"episode {window.episode_id}: ticks are missing in between, cut into {len(pieces)} pieces "
                f"(steps {spans})",
                plan,
            )
        if int(plan.steps[0]) != 0:
            self._note(
                f"episode {window.episode_id} starts at step {plan.steps[0]}: "
                "its first ticks are not in the bag",
                plan,
            )
        outcome, mode, probe_steps, reason = self._outcome(window)
        reaches_end = True
        if window.ended is not None and len(plan) > 1:
            tick = float(np.median(np.diff(plan.stamps)))
            if window.ended.stamp_ns - int(plan.stamps[-1]) > MAX_END_GAP_TICKS * tick:
                reaches_end = False
                self._note(
                    f"episode {window.episode_id}: its last "
                    f"{(window.ended.stamp_ns - int(plan.stamps[-1])) * 1e-9:.2f} s before the ENDED event "
                    "are not in the bag",
                    plan,
                )
        if outcome is Outcome.SUCCESS and not (reaches_end and pieces and pieces[-1][1] == len(plan)):
            self._note(
                f"episode {window.episode_id}: succeeded, but its end is not converted: no success", plan
            )
        meta = self.metadata
        extra = {
            "bag": self.path.name,
            "profile": meta.profile if meta is not None else "",
            "mode": mode.name.lower() if mode is not None else "",
            "outcome": outcome.name.lower() if outcome is not None else "",
            "reason": reason,
            "probe_steps": "" if probe_steps is None else str(probe_steps),
            "policy_versions": json.dumps(dict(meta.policy_versions), sort_keys=True)
            if meta is not None and meta.policy_versions
            else "",
        }
        event = window.started or window.ended
        robot_id = (meta.robot_id if meta is not None else "") or (
            event.robot_id if event is not None else ""
        )
        origin = _origin(plan.sources, mode)
        episodes = []
        for number, (start, stop) in enumerate(pieces, 1):
            span = slice(start, stop)
            executed, base = plan.actions[span], plan.bases[span]
            piece_extra = {**extra, "steps": f"{plan.steps[start]}-{plan.steps[stop - 1]}"}
            if len(pieces) > 1:
                piece_extra["piece"] = f"{number}/{len(pieces)}"
            problems = dict.fromkeys([*self._reader.problems, *self._bag_notes, *plan.notes])
            if problems:
                piece_extra["problems"] = "; ".join(problems)
            cameras = {camera: images[span] for camera, images in plan.images.items()}
            episodes.append(
                SftEpisode(
                    task=self.task,
                    cameras=cameras,
                    state=plan.states[span],
                    action=executed,
                    base_action=base,
                    residual=executed - base,
                    timestamps=plan.stamps[start] * 1e-9
                    + np.arange(stop - start, dtype=np.float64) / self.fps,
                    success=outcome is Outcome.SUCCESS and reaches_end and stop == len(plan),
                    info=EpisodeInfo(
                        robot_id=robot_id or "unknown",
                        origin=origin,
                        episode_id=window.episode_id,
                        extra={key: value for key, value in piece_extra.items() if value},
                    ),
                    state_names=STATE_NAMES,
                    action_names=ACTION_NAMES,
                )
            )
        return episodes

    def _outcome(self, window: _Window) -> tuple[Outcome | None, RunMode | None, int | None, str]:
        """Outcome, mode, k and reason of an episode: its events, else the metadata that names it."""
        meta = self.metadata
        named = meta if meta is not None and meta.episode_id == window.episode_id else None
        started, ended = window.started, window.ended
        outcome = ended.outcome if ended is not None else named.outcome if named is not None else None
        mode = started.mode if started is not None else named.mode if named is not None else None
        probe_steps = (
            started.probe_steps if started is not None else named.probe_steps if named is not None else None
        )
        reason = ended.reason if ended is not None else named.reason if named is not None else ""
        return outcome, mode, probe_steps, reason


def _event(message: Any, stamp_ns: int) -> _Event:
    """An EpisodeEvent; ValueError for a kind, outcome or mode this code does not know."""
    return _Event(
        kind=EventKind(int(message.event)),
        episode_id=int(message.episode_id),
        stamp_ns=stamp_ns,
        robot_id=str(message.robot_id),
        mode=RunMode(int(message.mode.value)),
        outcome=Outcome(int(message.outcome.value)),
        reason=str(message.reason),
        probe_steps=int(message.probe_steps),
    )


def _origin(sources: Sequence[Source], mode: RunMode | None) -> Origin:
    """HUMAN if a human's steps were executed, else the run mode's; without a mode, what the
    commands' sources show."""
    if Source.HUMAN in sources:
        return Origin.HUMAN
    if mode is not None:
        return ORIGIN_OF_MODE[mode]
    return Origin.PLD if Source.COMBINED in sources else Origin.BASE


def episodes_from_bag(
    path: Path,
    fps: float | None = None,
    cameras: Sequence[str] | None = None,
    view: View = "policy_view",
    arm: str | None = None,
    prompt: str | None = None,
) -> list[SftEpisode]:
    """Every episode a bag holds (pieces counted as episodes), in time order; see :class:`BagEpisodes`
    (which reads one at a time) for the arguments and the errors."""
    return list(BagEpisodes(path, fps=fps, cameras=cameras, view=view, arm=arm, prompt=prompt))


def episode_from_bag(
    path: Path,
    fps: float | None = None,
    cameras: Sequence[str] | None = None,
    view: View = "policy_view",
    arm: str | None = None,
    prompt: str | None = None,
) -> SftEpisode:
    """The one episode of an episode bag; ValueError if the bag holds several (a session bag, or an
    episode cut into pieces: use :func:`episodes_from_bag`). Arguments: :class:`BagEpisodes`."""
    episodes = episodes_from_bag(path, fps, cameras, view, arm, prompt)
    if len(episodes) != 1:
        names = ", ".join(f"{e.info.episode_id} {e.info.extra.get('piece', '')}".strip() for e in episodes)
        raise ValueError(
            f"{path}: holds {len(episodes)} episodes ({names}), not one; read it with episodes_from_bag"
        )
    return episodes[0]
