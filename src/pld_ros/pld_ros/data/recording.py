"""The recorder's core, without ROS: a byte-bounded queue, a writer thread, and the split into one
bag per episode (or one per session) with the episode's metadata.

The recorder node (:mod:`pld_ros.nodes.recorder`) only hands over what it receives, serialized:
:meth:`BagRecorder.put` takes ``(topic, receive time, CDR bytes)`` and returns at once, so a
subscription callback never waits for the disk. The writer thread does everything else, in the
order the messages arrived:

- Episode events (``pld_msgs/EpisodeEvent`` on the events topic, deserialized here; they are small)
  split the recording with ``split="episode"``: STARTED of this robot closes any open bag and opens
  the episode's bag, PHASE_CHANGED adds a :class:`~pld_ros.data.bags.PhaseMark`, ENDED sets the
  outcome and closes the bag ``end_grace`` s later, so that messages of the last tick still in
  flight are kept. Messages outside an episode are not recorded (``skipped``), except the
  pre-roll: the newest message of each topic of a :data:`PREROLL_TYPES` type (camera images and
  intrinsics, arm and joint states, base actions) received between episodes (after the last
  ENDED event, before the STARTED event) goes into the episode's bag at its start, with its own
  receive time, if it is at most :data:`PREROLL_AGE` old. The supervisor sends STARTED on a
  tick's state, and the camera frames of that tick were captured (and mostly received) just
  before: without the pre-roll, an episode whose first command is for the STARTED tick would have
  no images for it in its bag. Events stamped before the recorder started are history (the
  supervisor's events are transient local, so a late subscriber gets the last 50): they are
  recorded but split nothing, so a recorder started in mid-episode records from the next episode
  on.
- With ``split="session"`` everything goes into one bag from the first message to :meth:`stop`.
- Policy versions for the metadata come from the recorded messages themselves: the newest
  ``BaseAction.policy`` (``base``) and the newest ``PolicyWeights.version`` per policy (the
  weights announced; the residual node swaps them in between ticks).
- Bags are named ``<robot_id>-<episode id, 6 digits>-<UTC time>`` (session:
  ``<robot_id>-session-<UTC time>``) in the recording directory.

The queue holds at most ``queue_bytes`` of messages; a message that does not fit is dropped and
counted (``dropped``): with a disk too slow the newest data is lost, the recorder does not grow
without bound. Episode events are never dropped. A failed write (disk full) ends that bag (what it
holds stays readable), is counted and reported, and the next episode gets a new bag.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

from rosbags.interfaces import Qos
from rosbags.serde import SerdeError

from pld_ros.core.episode import EventKind, Outcome, Phase, RunMode
from pld_ros.data.bags import (
    CHUNK_PERIOD,
    BagError,
    BagWriter,
    Compression,
    EpisodeMetadata,
    PhaseMark,
    typestore,
)
from pld_ros.profile import Profile

EVENT_TYPE = "pld_msgs/msg/EpisodeEvent"
BASE_ACTION_TYPE = "pld_msgs/msg/BaseAction"
WEIGHTS_TYPE = "pld_msgs/msg/PolicyWeights"
STATE_TYPE = "pld_msgs/msg/RobotState"
IMAGE_TYPE = "sensor_msgs/msg/Image"
PREROLL_TYPES = frozenset(
    {IMAGE_TYPE, "sensor_msgs/msg/CameraInfo", STATE_TYPE, "sensor_msgs/msg/JointState", BASE_ACTION_TYPE}
)
"""Message types whose newest message per topic before an episode's STARTED event goes into its bag:
what a control tick's frame is made of (the camera images, the arm's state, the base action that
answers it; and the intrinsics and joint states that go with them)."""
PREROLL_AGE = 1.0
"""s: a pre-roll message older than this at the STARTED event is left out (our choice: twice the
converter's limit for a camera frame, ``bag_episodes.MAX_CAMERA_AGE``; an older one would only
stretch the bag back in time)."""
QUEUE_BYTES = 512 * 2**20
"""Bytes of messages the queue holds before it drops (our choice: ~9 s of two 640x480 rgb8 cameras
at 30 Hz, 55 MB/s, a disk stall or a slow chunk compression has to outlast that to lose data)."""
END_GRACE = 0.5
"""s an episode's bag stays open after its ENDED event, for messages of the last tick still on their
way (our choice: cameras and state are well within it on one host)."""
POLL_PERIOD = 0.1
"""s between two checks of the writer thread when no message comes (chunk period, end grace)."""
STOP_TIMEOUT = 60.0
"""s :meth:`BagRecorder.stop` waits for the queue to be written (a full queue: ~10 s on a slow
disk; beyond that the disk is failing and the launcher's SIGKILL comes first anyway)."""
Split = Literal["episode", "session"]


def default_topics(profile: Profile) -> list[str]:
    """What a profile's graph publishes that a dataset needs (names as in docs/topics.md, relative
    to the graph's namespace): each arm's state, commands and joint states, each camera's image,
    policy view and intrinsics, the base action and chunks, the success scores, the episode events
    and status, the stage machine, the residual's weights announcements. Not recorded by default:
    ``buffer/steps`` (the same views again, per tick) and ``/diagnostics``."""
    topics = [f"{arm}/{name}" for arm in profile.arms for name in ("state", "command", "joint_states")]
    topics += [
        f"cameras/{camera}/{name}"
        for camera in profile.cameras
        for name in ("image_raw", "policy_view", "camera_info")
    ]
    topics += [
        "policy/base/action",
        "policy/base/chunk",
        "policy/residual/weights",
        "reward/scores",
        "episode/events",
        "episode/status",
        "stage/state",
    ]
    return topics


class LogSink(Protocol):
    """Where the recorder reports (an rclpy node's logger, or a ``logging.Logger``)."""

    def info(self, message: str) -> Any: ...

    def warning(self, message: str) -> Any: ...

    def error(self, message: str) -> Any: ...


@dataclass(frozen=True)
class RecordedTopic:
    """A topic to record: its name (fully qualified), message type and publishers' offered QoS."""

    name: str
    msgtype: str
    qos: tuple[Qos, ...] = ()


@dataclass(frozen=True)
class RecorderStatus:
    """Counters since the recorder started, and what it is doing now."""

    received: int
    """Messages handed to :meth:`BagRecorder.put`."""
    written: int
    """Messages written into bags (a pre-roll message that also went into the last episode's bag,
    in its end grace, counts twice)."""
    dropped: int
    """Did not fit in the queue."""
    skipped: int
    """Arrived outside an episode (split by episode) and not carried into the next one as pre-roll,
    or for a bag that failed."""
    bytes_written: int
    queue_depth: int
    queue_bytes: int
    bags: int
    """Bags opened."""
    current_bag: str
    """Name of the open bag, "" when none."""
    durable: int
    """Messages of the open bag in chunks already handed to the operating system."""
    write_errors: int
    last_error: str


@dataclass(frozen=True)
class _Message:
    topic: str
    stamp_ns: int
    data: bytes


class _Stop:
    pass


_Item = _Message | RecordedTopic | _Stop


class _ByteQueue:
    """FIFO bounded by the bytes of its messages; control items always fit."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.bytes = 0
        self._items: deque[_Item] = deque()
        self._ready = threading.Condition()

    def put(self, item: _Item, force: bool = False) -> bool:
        size = len(item.data) if isinstance(item, _Message) else 0
        with self._ready:
            if not force and self.bytes + size > self.capacity:
                return False
            self._items.append(item)
            self.bytes += size
            self._ready.notify()
        return True

    def get(self, timeout: float) -> _Item | None:
        with self._ready:
            if not self._items and not self._ready.wait(timeout):
                return None
            item = self._items.popleft()
            if isinstance(item, _Message):
                self.bytes -= len(item.data)
            return item

    def __len__(self) -> int:
        return len(self._items)


def _utc_stamp(stamp_ns: int) -> str:
    return datetime.fromtimestamp(stamp_ns * 1e-9, timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class BagRecorder:
    """Writes what :meth:`put` receives into bags, from a thread of its own (see the module docstring).

    ``identity``: the robot, profile, prompt and control rate every bag's metadata starts from.
    ``stage_prompts``: stage -> the prompt the base policy gets in it, for episodes of one stage
    (the identity's prompt for any other).
    ``events_topic``: the fully qualified name of the supervisor's episode events. ``preroll_age``:
    s, see :data:`PREROLL_AGE`. ``not_before_ns``: events stamped earlier are history. ``clock``:
    ns since the epoch, the same clock as the stamps given to :meth:`put` (for the end grace when no
    message comes).
    """

    def __init__(
        self,
        directory: Path,
        identity: EpisodeMetadata,
        log: LogSink,
        *,
        events_topic: str,
        split: Split = "episode",
        compression: Compression = "zstd",
        queue_bytes: int = QUEUE_BYTES,
        chunk_period: float = CHUNK_PERIOD,
        end_grace: float = END_GRACE,
        preroll_age: float = PREROLL_AGE,
        stage_prompts: Mapping[str, str] | None = None,
        not_before_ns: int | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if queue_bytes <= 0 or end_grace < 0.0 or preroll_age < 0.0:
            raise ValueError(
                "queue_bytes must be positive, end_grace and preroll_age not negative "
                f"({queue_bytes}, {end_grace}, {preroll_age})"
            )
        self.directory = directory
        self.identity = identity
        self.stage_prompts = dict(stage_prompts or {})
        self.log = log
        self.events_topic = events_topic
        self.split = split
        self.compression: Compression = compression
        self.chunk_period = chunk_period
        self.end_grace_ns = int(end_grace * 1e9)
        self.preroll_age_ns = int(preroll_age * 1e9)
        self.clock = clock
        self.not_before_ns = clock() if not_before_ns is None else not_before_ns
        self._store = typestore()
        self._queue = _ByteQueue(queue_bytes)
        self._thread = threading.Thread(target=self._run, name="bag_writer", daemon=True)
        # Counters written by one thread each and read by any (ints: no torn reads).
        self._received = self._dropped = 0
        self._written = self._skipped = self._bytes = self._bags = self._write_errors = 0
        self._last_error = ""
        # The writer thread's state.
        self._topics: dict[str, RecordedTopic] = {}
        self._bag: BagWriter | None = None
        self._meta: EpisodeMetadata | None = None
        self._close_at_ns: int | None = None
        self._versions: dict[str, str] = {}
        # Topic -> its newest pre-roll message, and whether it is counted (written or skipped) already.
        self._preroll: dict[str, tuple[_Message, bool]] = {}

    # -- the callers' side ---------------------------------------------------------------------

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def add_topic(self, topic: RecordedTopic) -> None:
        """Declare a topic before putting its first message."""
        self._queue.put(topic, force=True)

    def put(self, topic: str, stamp_ns: int, data: bytes) -> bool:
        """Queue one serialized message received at ``stamp_ns``; False if it was dropped."""
        self._received += 1
        if self._queue.put(_Message(topic, stamp_ns, data), force=topic == self.events_topic):
            return True
        self._dropped += 1
        return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Write what is queued, close the open bag (a complete bag), end the thread. False if
        that took longer than ``timeout`` s (the bag then stays as a killed recorder's would)."""
        if not self._thread.is_alive():
            return True
        self._queue.put(_Stop(), force=True)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def status(self) -> RecorderStatus:
        bag = self._bag
        return RecorderStatus(
            received=self._received,
            written=self._written,
            dropped=self._dropped,
            skipped=self._skipped,
            bytes_written=self._bytes,
            queue_depth=len(self._queue),
            queue_bytes=self._queue.bytes,
            bags=self._bags,
            current_bag=bag.path.name if bag is not None else "",
            durable=bag.durable_messages if bag is not None else 0,
            write_errors=self._write_errors,
            last_error=self._last_error,
        )

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not isinstance(item := self._queue.get(POLL_PERIOD), _Stop):
                try:
                    self._handle(item)
                except Exception as exc:  # the recorder must outlive a bug in one message's handling
                    self._write_errors += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    self.log.error(f"recorder: unexpected error, message skipped: {self._last_error}")
        finally:
            self._close("recorder stopped")
            self._skipped += sum(not counted for _, counted in self._preroll.values())
            self._preroll.clear()

    def _handle(self, item: _Message | RecordedTopic | None) -> None:
        if isinstance(item, RecordedTopic):
            self._on_topic(item)
        elif isinstance(item, _Message):
            if item.topic == self.events_topic:
                self._on_event(item)
            else:
                self._on_message(item)
        self._housekeeping()

    def _on_topic(self, topic: RecordedTopic) -> None:
        self._topics[topic.name] = topic
        self._guarded(lambda bag: bag.add_topic(topic.name, topic.msgtype, topic.qos))

    def _housekeeping(self) -> None:
        if self._close_at_ns is not None and self.clock() >= self._close_at_ns:
            self._close("")
        self._guarded(lambda bag: bag.flush_due())

    def _on_message(self, message: _Message) -> None:
        msgtype = self._topics[message.topic].msgtype
        if msgtype == BASE_ACTION_TYPE and (action := self._decode(message, msgtype)) is not None:
            self._versions["base"] = str(action.policy)
        elif msgtype == WEIGHTS_TYPE and (weights := self._decode(message, msgtype)) is not None:
            self._versions[str(weights.policy)] = str(weights.version)
        if self._bag is None and self.split == "session":
            self._open(f"{self.identity.robot_id}-session", self.identity, message)
        between = self._bag is None or self._close_at_ns is not None  # no episode, or one that ended
        if self.split == "episode" and msgtype in PREROLL_TYPES and between:
            self._hold(message)
        else:
            self._write(message)

    def _hold(self, message: _Message) -> None:
        """Keep ``message`` as its topic's pre-roll; in the end grace of an episode's bag it goes into
        that bag too (so that a STARTED event within the grace still finds it)."""
        counted = self._bag is not None
        if counted:
            self._write(message)
        replaced = self._preroll.get(message.topic)
        if replaced is not None and not replaced[1]:
            self._skipped += 1
        self._preroll[message.topic] = (message, counted)

    def _write_preroll(self, started_ns: int) -> None:
        """Write the pre-roll into the bag just opened for the episode started at ``started_ns``."""
        held = sorted(self._preroll.values(), key=lambda item: item[0].stamp_ns)
        self._preroll.clear()
        for message, counted in held:
            if started_ns - message.stamp_ns <= self.preroll_age_ns:
                self._write(message)
            elif not counted:
                self._skipped += 1

    def _on_event(self, message: _Message) -> None:
        event = self._decode(message, EVENT_TYPE)
        current = (
            event is not None
            and event.robot_id == self.identity.robot_id
            and event.header.stamp.sec * 10**9 + event.header.stamp.nanosec >= self.not_before_ns
        )
        if self.split == "session" or not current:
            self._on_message(message)
            return
        kind = EventKind(event.event)
        episode = int(event.episode_id)
        mark = PhaseMark(Phase(event.phase.value), int(event.step), message.stamp_ns)
        if kind is EventKind.STARTED:
            self._close("the next episode started before this one's ENDED event")
            stage = str(event.stage)
            meta = replace(
                self.identity,
                prompt=self.stage_prompts.get(stage, self.identity.prompt),
                stage=stage,
                episode_id=episode,
                mode=RunMode(event.mode.value),
                probe_steps=int(event.probe_steps),
                phases=(mark,),
            )
            self._open(f"{self.identity.robot_id}-{episode:06d}", meta, message)
            self._write_preroll(message.stamp_ns)
            self._write(message)
            return
        if self._meta is None or self._meta.episode_id != episode:
            self._skipped += 1  # an event of an episode this recorder has no bag for
            return
        self._write(message)
        meta = replace(self._meta, phases=(*self._meta.phases, mark))
        if kind is EventKind.ENDED:
            meta = replace(meta, outcome=Outcome(event.outcome.value), reason=str(event.reason))
            self._close_at_ns = message.stamp_ns + self.end_grace_ns
        self._meta = meta
        self._guarded(lambda bag: bag.write_metadata(self._with_versions(meta), message.stamp_ns))

    def _decode(self, message: _Message, msgtype: str) -> Any:
        """The message deserialized, or None (reported) if it is not a valid ``msgtype``."""
        try:
            return self._store.deserialize_cdr(message.data, msgtype)
        except SerdeError as exc:
            self.log.warning(f"a message on {message.topic} is not a valid {msgtype}, recorded as is: {exc}")
            return None

    def _with_versions(self, meta: EpisodeMetadata) -> EpisodeMetadata:
        return replace(meta, policy_versions=dict(self._versions))

    def _open(self, name: str, meta: EpisodeMetadata, first: _Message) -> None:
        name = f"{name}-{_utc_stamp(first.stamp_ns)}"
        path = self.directory / name
        suffix = 1
        while path.exists():  # a second bag within the same second
            path = self.directory / f"{name}-{suffix}"
            suffix += 1
        bag = BagWriter(path, compression=self.compression, chunk_period=self.chunk_period, store=self._store)
        try:
            bag.open()
            for topic in self._topics.values():
                bag.add_topic(topic.name, topic.msgtype, topic.qos)
            self._bag, self._meta, self._close_at_ns = bag, meta, None
            bag.write_metadata(self._with_versions(meta), first.stamp_ns)
        except (BagError, OSError) as exc:
            self._fail(exc, bag)
            return
        self._bags += 1

    def _write(self, message: _Message) -> None:
        if self._bag is None:
            self._skipped += 1
            return
        if self._guarded(lambda bag: bag.write(message.topic, message.stamp_ns, message.data)):
            self._written += 1
            self._bytes += len(message.data)
        else:
            self._skipped += 1

    def _guarded(self, action: Callable[[BagWriter], object]) -> bool:
        """Run ``action`` on the open bag; a failure ends the bag. False if it failed or none is open."""
        if self._bag is None:
            return False
        try:
            action(self._bag)
        except (BagError, OSError) as exc:
            self._fail(exc, self._bag)
            return False
        return True

    def _fail(self, exc: Exception, bag: BagWriter) -> None:
        """``bag`` failed: stop writing it (what it holds stays readable), count and report."""
        self._write_errors += 1
        self._last_error = str(exc)
        self.log.error(f"recording failed, {bag.path.name} ends here: {exc}")
        self._bag, self._meta, self._close_at_ns = None, None, None
        with contextlib.suppress(OSError):  # the storage file is closed (or its disk gone) either way
            bag.abort()

    def _close(self, unfinished: str) -> None:
        """Close the open bag. ``unfinished``: why an episode without its ENDED event stops here."""
        bag, meta = self._bag, self._meta
        if bag is None or meta is None:
            return
        self._bag, self._meta, self._close_at_ns = None, None, None
        try:
            if meta.episode_id is not None and meta.outcome is None:
                meta = replace(meta, reason=unfinished)
            last_ns = self.clock()
            bag.write_metadata(self._with_versions(meta), last_ns)
            bag.close()
        except (BagError, OSError) as exc:
            self._fail(exc, bag)
            return
        size = f"{bag.messages} messages, {bag.bytes / 1e6:.1f} MB"
        self.log.info(f"bag {bag.path.name} closed: {_describe(meta)}, {size}")


def _describe(meta: EpisodeMetadata) -> str:
    if meta.episode_id is None:
        return "session"
    outcome = meta.outcome.name.lower() if meta.outcome is not None else f"not ended ({meta.reason})"
    return f"episode {meta.episode_id} {outcome}"


def counters(status: RecorderStatus) -> Mapping[str, object]:
    """The status as /diagnostics key-values."""
    return {
        "received": status.received,
        "written": status.written,
        "dropped": status.dropped,
        "skipped": status.skipped,
        "bytes_written": status.bytes_written,
        "queue_depth": status.queue_depth,
        "queue_megabytes": f"{status.queue_bytes / 1e6:.1f}",
        "bags": status.bags,
        "current_bag": status.current_bag,
        "durable": status.durable,
        "write_errors": status.write_errors,
        "last_error": status.last_error,
    }
