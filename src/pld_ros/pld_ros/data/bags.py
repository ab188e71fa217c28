"""rosbag2 bags without ROS: the type store, a writer of already-serialized messages, episode
metadata, bag info, and a reader that recovers what a killed recorder left.

Format: rosbag2 version 9 with MCAP storage (what ``ros2 bag`` writes by default since Iron), written
with ``rosbags``' writer. Compression is zstd per MCAP chunk (rosbags' ``CompressionMode.STORAGE``
with its MCAP writer; ``ros2 bag``'s ``--compression-mode`` file/message are not used): every
chunk is compressed on its own, so a damaged or missing chunk loses only its own messages, and a
reader can seek. rosbags' MCAP writer closes a chunk once it holds more than 1 MiB of messages
(two 640x480 rgb8 frames); :class:`BagWriter` also closes one when its oldest message is
``chunk_period`` old and flushes every closed chunk to the operating system, so that a process
killed with SIGKILL loses only the chunk it was filling (at most ``chunk_period`` s of data, or
1 MiB). Flushed is not fsync'd: the data survives a killed process, not a power loss.

Episode metadata (:class:`EpisodeMetadata`) is stored twice: as ``custom_data`` key
:data:`METADATA_KEY` (JSON) in ``metadata.yaml``, which ``ros2 bag info`` and rosbags show, and as
``std_msgs/String`` JSON messages on :data:`EPISODE_META_TOPIC`, written when the episode starts
and again when it ends. The messages are what survives a SIGKILL (``metadata.yaml`` is written
only when a bag is closed); the last one is authoritative.

Reading. rosbags opens a complete bag only: its rosbag2 reader needs ``metadata.yaml`` and its
MCAP reader the footer and end magic (checked with rosbags 0.11.9: "File end magic is invalid"),
both written at close. :class:`BagReader` therefore reads the MCAP records itself (format:
https://mcap.dev/spec): it needs neither file, and reports what it cannot read (a damaged chunk, a
file cut inside a record) as :class:`BagWarning`\\ s and in :attr:`BagReader.problems`, keeping
everything else. A file closed properly ends with a summary section (schemas, channels, a chunk
index per chunk, per-channel message counts) and a footer that locates it; when that summary
checks out against the file, it is the index, and opening the bag costs a few small reads instead
of decompressing every chunk (3 episode bags of 10 s with two 640x480 cameras: 0.02 s instead of
1 s); any other file is scanned record by record. A damaged chunk shows as compressed data or
records that no longer parse, or as a CRC-32 mismatch where the writer stored one (``ros2 bag``
does; rosbags 0.11.9 stores none, so a flipped bit in an uncompressible image can go unnoticed):
at opening in a scanned file, when the chunk is read in one indexed from its summary.
:func:`bag_info` takes the quick way through rosbags' index for a complete bag and
:class:`BagReader` otherwise.
"""

from __future__ import annotations

import heapq
import importlib
import json
import math
import os
import struct
import sys
import time
import warnings
import zlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, NamedTuple, cast

from rosbags.interfaces import Qos
from rosbags.rosbag2 import CompressionFormat, CompressionMode, Reader, StoragePlugin, Writer
from rosbags.rosbag2 import WriterError as RosbagsWriterError
from rosbags.rosbag2.storage_mcap import McapWriter
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from pld_ros.core.episode import Outcome, Phase, RunMode

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # the backport rosbags itself uses before Python 3.14
    from backports import zstd

BAG_VERSION: Literal[9] = 9
"""rosbag2 metadata version written (Jazzy and Kilted write 9)."""
EPISODE_META_TOPIC = "/pld/episode_meta"
"""Topic of the episode metadata messages inside a bag (``std_msgs/String``, JSON)."""
EPISODE_META_TYPE = "std_msgs/msg/String"
METADATA_KEY = "pld.episode"
"""``custom_data`` key of ``metadata.yaml`` holding the episode metadata (JSON)."""
CHUNK_PERIOD = 1.0
"""s: the longest a message waits in an open chunk before the chunk is written (our choice: a
SIGKILL loses at most about a second of a slow topic; shorter chunks compress slightly worse)."""
Compression = Literal["none", "zstd"]

_MCAP_MAGIC = b"\x89MCAP0\r\n"
# MCAP record opcodes (https://mcap.dev/spec#records).
_OP_HEADER, _OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
_OP_MESSAGE_INDEX, _OP_CHUNK_INDEX, _OP_STATISTICS, _OP_DATA_END = 0x07, 0x08, 0x0B, 0x0F
_RECORD_NAMES = {
    _OP_HEADER: "header",
    _OP_FOOTER: "footer",
    _OP_SCHEMA: "schema",
    _OP_CHANNEL: "channel",
    _OP_MESSAGE: "message",
    _OP_CHUNK: "chunk",
    _OP_MESSAGE_INDEX: "message index",
    _OP_CHUNK_INDEX: "chunk index",
    _OP_STATISTICS: "statistics",
    _OP_DATA_END: "data end",
}
_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
_RECORD_HEAD = struct.Struct("<BQ")  # opcode, content length
_MESSAGE_HEAD = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time
_CHUNK_HEAD = struct.Struct("<QQQI")  # message start time, end time, uncompressed size, CRC-32
# The summary section (https://mcap.dev/spec#summary-section) and the footer that locates it.
_FOOTER = struct.Struct("<BQQQI")  # opcode, length (20), summary start, summary offset start, summary CRC-32
_FOOTER_CRC_SPAN = _FOOTER.size - 4  # the footer bytes the summary CRC covers: all before the CRC
_CHUNK_INDEX_HEAD = struct.Struct("<QQQQ")  # message start time, end time, chunk record offset, its length
# Message count; schema, channel, attachment, metadata and chunk counts; message start and end time.
_STATISTICS_HEAD = struct.Struct("<QHIIIIQQ")
_CHANNEL_COUNT = struct.Struct("<HQ")  # a map entry: channel id -> u64 (message count, or file offset)
_INDEX_ENTRY = struct.Struct("<QQ")  # a message index entry: log time, offset in the chunk's records


class BagError(Exception):
    """A bag that cannot be written or read at all; the message names the path and why."""


class BagWarning(UserWarning):
    """A part of a bag that could not be read (the rest was)."""


# --------------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------------


def pld_msgs_directory() -> Path:
    """The ``msg/`` folder of pld_msgs: installed (``share/pld_msgs/msg`` under an
    ``AMENT_PREFIX_PATH`` entry), else the source tree's ``src/pld_msgs/msg``."""
    prefixes = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    candidates = [p / "share" / "pld_msgs" / "msg" for p in prefixes]
    candidates.append(Path(__file__).resolve().parents[3] / "pld_msgs" / "msg")
    for candidate in candidates:
        if any(candidate.glob("*.msg")):
            return candidate
    raise BagError(f"no pld_msgs message definitions found (looked in {', '.join(map(str, candidates))})")


@cache
def typestore() -> Typestore:
    """ROS 2 Jazzy's standard types plus pld_msgs' messages (from their .msg files).

    The message hashes equal the ones rosidl generates (checked for ``sensor_msgs/Image`` and
    ``pld_msgs/EpisodeEvent`` against the Kilted build), so bags written with this store play
    back through ``ros2 bag`` and rclpy unchanged.
    """
    store = get_typestore(Stores.ROS2_JAZZY)
    types: dict[str, Any] = {}
    for path in sorted(pld_msgs_directory().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"pld_msgs/msg/{path.stem}"))
    store.register(types)
    return store


def message_class(msgtype: str) -> Any:
    """The Python class of a ROS message type name (``sensor_msgs/msg/Image``).

    Imports the message package, so it needs a ROS environment; this module itself does not.
    Raises :class:`BagError` when the package or the type is not installed.
    """
    try:
        package, kind, name = msgtype.split("/")
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError, ValueError):
        raise BagError(f"message type {msgtype!r} is not installed here") from None


# --------------------------------------------------------------------------------------------
# Episode metadata
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseMark:
    """The episode entered ``phase`` at control tick ``step``, at ``stamp_ns`` (the event's stamp)."""

    phase: Phase
    step: int
    stamp_ns: int


@dataclass(frozen=True)
class EpisodeMetadata:
    """What a bag holds: whose robot, which profile, which episode, and how it went.

    A session bag (``recording.split: session``) has no episode: ``episode_id``, ``mode`` and
    ``outcome`` are None. ``outcome`` is also None for an episode whose end was not recorded.
    """

    robot_id: str
    profile: str
    prompt: str = ""
    """The language instruction given to the base policy."""
    episode_id: int | None = None
    mode: RunMode | None = None
    outcome: Outcome | None = None
    reason: str = ""
    """Why the episode ended (the supervisor's ENDED reason), e.g. "success", "step limit"."""
    probe_steps: int | None = None
    """k: base-policy steps before the residual's takeover."""
    phases: tuple[PhaseMark, ...] = ()
    policy_versions: Mapping[str, str] = field(default_factory=dict)
    """Policy -> version or model, e.g. ``{"base": "onnx:pick.onnx", "residual": "12"}``."""
    control_rate: float | None = None
    """Hz: the control ticks' rate (the profile's ``supervisor.control_rate``); None in bags recorded
    before the recorder stored it."""
    stage: str = ""
    """The stage the episode worked on (``EpisodeEvent.stage``; an episode per stage attempt with
    ``supervisor.episode_scope: stage``); "" when unknown."""

    def to_json(self) -> str:
        def name(value: RunMode | Outcome | None) -> str | None:
            return None if value is None else value.name.lower()

        return json.dumps(
            {
                "robot_id": self.robot_id,
                "profile": self.profile,
                "prompt": self.prompt,
                "episode_id": self.episode_id,
                "mode": name(self.mode),
                "outcome": name(self.outcome),
                "reason": self.reason,
                "probe_steps": self.probe_steps,
                "phases": [
                    {"phase": m.phase.name.lower(), "step": m.step, "stamp_ns": m.stamp_ns}
                    for m in self.phases
                ],
                "policy_versions": dict(self.policy_versions),
                "control_rate": self.control_rate,
                "stage": self.stage,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, source: str) -> EpisodeMetadata:
        """Parse :meth:`to_json`'s output; :class:`BagError` naming ``source`` and the field if invalid."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            phases = tuple(
                PhaseMark(Phase[str(m["phase"]).upper()], int(m["step"]), int(m["stamp_ns"]))
                for m in data.get("phases", [])
            )
            optional = {
                key: data.get(key) for key in ("episode_id", "probe_steps", "mode", "outcome", "control_rate")
            }
            rate = None if optional["control_rate"] is None else float(optional["control_rate"])
            if rate is not None and not (math.isfinite(rate) and rate > 0.0):
                raise ValueError(f"control_rate must be a positive number of Hz, got {rate}")
            return cls(
                robot_id=str(data["robot_id"]),
                profile=str(data["profile"]),
                prompt=str(data.get("prompt", "")),
                episode_id=None if optional["episode_id"] is None else int(optional["episode_id"]),
                mode=None if optional["mode"] is None else RunMode[str(optional["mode"]).upper()],
                outcome=None if optional["outcome"] is None else Outcome[str(optional["outcome"]).upper()],
                reason=str(data.get("reason", "")),
                probe_steps=None if optional["probe_steps"] is None else int(optional["probe_steps"]),
                phases=phases,
                policy_versions={str(k): str(v) for k, v in dict(data.get("policy_versions", {})).items()},
                control_rate=rate,
                stage=str(data.get("stage", "")),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise BagError(f"{source}: invalid episode metadata ({type(exc).__name__}: {exc})") from None


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class BagWriter:
    """Write one bag from messages that are already serialized (CDR), e.g. received raw.

    Use as a context manager, or :meth:`open` / :meth:`close`. Topics are declared with
    :meth:`add_topic` before their first message. :meth:`write` never deserializes, so images cost
    a copy into the chunk and its compression, nothing more. Not thread-safe: one writer thread.
    """

    def __init__(
        self,
        path: Path,
        *,
        compression: Compression = "zstd",
        chunk_period: float = CHUNK_PERIOD,
        store: Typestore | None = None,
    ) -> None:
        """``path``: the bag directory to create (must not exist). ``compression``: per chunk.
        ``chunk_period``: s, see the module docstring."""
        if not chunk_period > 0.0:
            raise ValueError(f"chunk_period must be positive, got {chunk_period}")
        self.path = path
        self.chunk_period = chunk_period
        self._store = store or typestore()
        try:
            self._writer = Writer(path, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        except RosbagsWriterError as exc:
            raise BagError(f"{path}: cannot create the bag: {exc}") from None
        if compression == "zstd":
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._connections: dict[str, Any] = {}
        self._metadata: EpisodeMetadata | None = None
        self._chunk_opened: float | None = None  # monotonic time of the open chunk's first message
        self._chunks_seen = 0
        self._pending = 0
        self.messages = 0
        """Messages written so far."""
        self.bytes = 0
        """Serialized bytes written so far (before compression)."""
        self.durable_messages = 0
        """Messages in chunks handed to the operating system: what survives a SIGKILL."""

    @property
    def _storage(self) -> McapWriter:
        # Chunk control goes through rosbags' MCAP writer itself (rosbags 0.11.9, pinned in
        # requirements/constraints.txt): its Writer has no public way to end a chunk early.
        storage = self._writer.storage
        if storage is None:
            raise BagError(f"{self.path}: the bag is not open")
        return cast(McapWriter, storage)

    def open(self) -> BagWriter:
        try:
            self._writer.open()
        except (RosbagsWriterError, OSError) as exc:
            raise BagError(f"{self.path}: cannot create the bag: {exc}") from None
        self.add_topic(EPISODE_META_TOPIC, EPISODE_META_TYPE)
        return self

    def add_topic(self, topic: str, msgtype: str, qos: Sequence[Qos] = ()) -> None:
        """Declare a topic (idempotent). ``qos``: the publishers' offered QoS, kept for ``ros2 bag play``."""
        if topic in self._connections:
            return
        if msgtype not in self._store.fielddefs:
            raise BagError(f"{self.path}: topic {topic}: message type {msgtype!r} is not in the type store")
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=self._store, offered_qos_profiles=list(qos)
        )

    def write(self, topic: str, timestamp_ns: int, data: bytes | memoryview) -> None:
        """Append one serialized message; ``timestamp_ns``: its receive (log) time, ns since the epoch."""
        connection = self._connections.get(topic)
        if connection is None:
            raise BagError(f"{self.path}: topic {topic} was not added")
        self._writer.write(connection, timestamp_ns, data)
        self.messages += 1
        self.bytes += len(data)
        self._pending += 1
        if self._chunk_opened is None:
            self._chunk_opened = time.monotonic()
        self._after_write()
        self.flush_due()

    def write_metadata(self, metadata: EpisodeMetadata, timestamp_ns: int) -> None:
        """Record ``metadata`` now (a message on :data:`EPISODE_META_TOPIC`); the last one given is
        also written to ``metadata.yaml`` at close."""
        message: Any = self._store.types[EPISODE_META_TYPE]
        message = message(data=metadata.to_json())
        self.write(EPISODE_META_TOPIC, timestamp_ns, self._store.serialize_cdr(message, EPISODE_META_TYPE))
        self._metadata = metadata

    def flush_due(self) -> None:
        """Write the open chunk if its oldest message is ``chunk_period`` old (call when idle too)."""
        opened = self._chunk_opened
        if opened is not None and time.monotonic() - opened >= self.chunk_period:
            self._storage.close_chunk()
            self._after_write()

    def _after_write(self) -> None:
        storage = self._storage
        if len(storage.chunks) != self._chunks_seen:  # a chunk was closed, by rosbags or by us
            self._chunks_seen = len(storage.chunks)
            storage.bio.flush()
            self.durable_messages += self._pending
            self._pending = 0
            self._chunk_opened = None

    def close(self) -> None:
        """Write the last chunk, the MCAP summary and ``metadata.yaml``: a complete bag."""
        if self._metadata is not None:
            self._writer.set_custom_data(METADATA_KEY, self._metadata.to_json())
        try:
            self._writer.close()
        except (RosbagsWriterError, OSError) as exc:
            raise BagError(f"{self.path}: cannot close the bag: {exc}") from None
        self.durable_messages = self.messages

    def abort(self) -> None:
        """Stop writing without the summary (after an error); the chunks written stay readable."""
        self._writer.abort()

    def __enter__(self) -> BagWriter:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class BagMessage(NamedTuple):
    """One recorded message, still serialized (CDR)."""

    topic: str
    timestamp_ns: int
    """Receive (log) time, ns since the epoch."""
    data: bytes
    msgtype: str


@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    count: int


@dataclass(frozen=True)
class BagInfo:
    """What :func:`bag_info` reports."""

    path: Path
    files: tuple[Path, ...]
    size_bytes: int
    topics: tuple[TopicInfo, ...]
    start_ns: int | None
    """Time of the first message; None for a bag without messages."""
    end_ns: int | None
    metadata: EpisodeMetadata | None
    complete: bool
    """Closed properly: ``metadata.yaml`` and the MCAP summary are there (rosbags opens it)."""
    problems: tuple[str, ...] = ()

    @property
    def message_count(self) -> int:
        return sum(t.count for t in self.topics)

    @property
    def duration_ns(self) -> int:
        return 0 if self.start_ns is None or self.end_ns is None else self.end_ns - self.start_ns


@dataclass
class _Channel:
    topic: str
    msgtype: str


@dataclass
class _Segment:
    """Messages that are read together: one chunk, or one message outside chunks."""

    file: Path
    index: int  # of the file in the bag
    offset: int  # of the record's content
    length: int
    chunk: bool
    start_ns: int
    end_ns: int
    channels: set[int] = field(default_factory=set)


class _Corrupt(Exception):
    """A record's content does not parse."""


def _string(buffer: memoryview, pos: int) -> tuple[str, int]:
    (size,) = _U32.unpack_from(buffer, pos)
    end = pos + 4 + size
    if end > len(buffer):
        raise _Corrupt(f"string of {size} bytes runs past its record")
    return bytes(buffer[pos + 4 : end]).decode(), end


def _schema(record: memoryview) -> tuple[int, str, str | None]:
    """A schema record's id, message type and ROS 2 message definition (None in another
    encoding): the definition the bag was recorded with."""
    (schema_id,) = _U16.unpack_from(record, 0)
    name, pos = _string(record, 2)
    encoding, pos = _string(record, pos)
    text, _ = _string(record, pos)
    return schema_id, name, text if encoding == "ros2msg" else None


def _records(buffer: memoryview) -> Iterator[tuple[int, memoryview]]:
    """The records of a chunk's content: (opcode, content)."""
    pos = 0
    while pos < len(buffer):
        if pos + _RECORD_HEAD.size > len(buffer):
            raise _Corrupt(f"record header cut at byte {pos} of {len(buffer)}")
        opcode, length = _RECORD_HEAD.unpack_from(buffer, pos)
        pos += _RECORD_HEAD.size
        if pos + length > len(buffer):
            raise _Corrupt(
                f"record of {length} bytes at byte {pos} runs past the chunk ({len(buffer)} bytes)"
            )
        yield opcode, buffer[pos : pos + length]
        pos += length


def _decompress(compression: str, data: bytes, size: int, crc: int) -> memoryview:
    try:
        if compression == "zstd":
            raw = zstd.decompress(data)
        elif compression == "":
            raw = data
        else:
            raise _Corrupt(f"unsupported chunk compression {compression!r}")
    except zstd.ZstdError as exc:
        raise _Corrupt(f"zstd: {exc}") from None
    if len(raw) != size:
        raise _Corrupt(f"{len(raw)} bytes decompressed, the chunk says {size}")
    if crc and zlib.crc32(raw) != crc:
        raise _Corrupt("CRC-32 mismatch (damaged data)")
    return memoryview(raw)


def _chunk_content(content: memoryview) -> memoryview:
    """The decompressed records of a chunk record's content, CRC checked when it has one."""
    if len(content) < _CHUNK_HEAD.size + 4:
        raise _Corrupt("chunk header cut short")
    _, _, size, crc = _CHUNK_HEAD.unpack_from(content, 0)
    compression, pos = _string(content, _CHUNK_HEAD.size)
    (length,) = _U64.unpack_from(content, pos)
    pos += 8
    if pos + length > len(content):
        raise _Corrupt("compressed data runs past the chunk record")
    return _decompress(compression, bytes(content[pos : pos + length]), size, crc)


class _ChunkIndex(NamedTuple):
    """A chunk as the summary describes it."""

    start_ns: int
    end_ns: int
    offset: int
    """Of the chunk record in the file (its opcode)."""
    length: int
    """Of the whole record."""
    message_indexes: dict[int, int]
    """Channel id -> file offset of its message index record: the channels with messages in it."""


@dataclass(frozen=True)
class _Summary:
    """What a file's summary section says of its data section."""

    schemas: dict[int, str]
    """Schema id -> message type."""
    definitions: dict[str, str]
    """Message type -> the ROS 2 message definition it was recorded with."""
    channels: dict[int, _Channel]
    counts: dict[int, int]
    """Channel id -> messages."""
    chunks: list[_ChunkIndex]
    metadata: list[tuple[int, int, int]] = field(default_factory=list)
    """Every :data:`EPISODE_META_TOPIC` message: (log time, chunk number, offset in the chunk's records)."""


def _read_summary(stream: IO[bytes], size: int) -> _Summary | None:
    """The summary of a closed MCAP file, checked against the file; None when there is none, or one
    that does not account for every message (then the file is scanned instead).

    Checked: the footer and end magic, the summary CRC-32 when the writer stored one, one statistics
    record whose chunk and message counts match the chunk indexes and the channels' counts, every
    channel with messages listed in a chunk's message indexes (a writer may put messages outside
    chunks, or write no message indexes), every chunk index pointing at a chunk record of its length.
    Chunks are not decompressed: a damaged one shows when it is read.
    """
    tail_size = _FOOTER.size + len(_MCAP_MAGIC)
    if size < len(_MCAP_MAGIC) + tail_size:
        return None
    stream.seek(size - tail_size)
    tail = stream.read(tail_size)
    if len(tail) != tail_size or tail[_FOOTER.size :] != _MCAP_MAGIC:
        return None
    opcode, length, summary_start, _, summary_crc = _FOOTER.unpack_from(tail, 0)
    end = size - tail_size
    if opcode != _OP_FOOTER or length != _FOOTER.size - _RECORD_HEAD.size:
        return None
    if not len(_MCAP_MAGIC) < summary_start <= end:  # 0: the writer wrote no summary
        return None
    stream.seek(summary_start)
    data = stream.read(end - summary_start)
    if summary_crc and zlib.crc32(tail[:_FOOTER_CRC_SPAN], zlib.crc32(data)) != summary_crc:
        return None
    try:
        summary = _parse_summary(memoryview(data), summary_start)
        metadata = _metadata_in_chunks(summary, stream)
    except (_Corrupt, struct.error, UnicodeDecodeError):
        return None
    return replace(summary, metadata=metadata)


def _parse_summary(data: memoryview, summary_start: int) -> _Summary:
    """The summary section's records; :class:`_Corrupt` if they do not describe a data section."""
    schemas: dict[int, str] = {}
    definitions: dict[str, str] = {}
    channels: dict[int, _Channel] = {}
    chunks: list[_ChunkIndex] = []
    statistics: list[tuple[int, int, dict[int, int]]] = []  # message count, chunk count, channel counts
    for opcode, record in _records(data):
        if opcode == _OP_SCHEMA:
            schema_id, name, text = _schema(record)
            schemas[schema_id] = name
            if text is not None:
                definitions[name] = text
        elif opcode == _OP_CHANNEL:
            channel_id, schema_id = struct.unpack_from("<HH", record, 0)
            topic, _ = _string(record, 4)
            if schema_id not in schemas:
                raise _Corrupt(f"channel {topic} names schema {schema_id}, which is not in the summary")
            channels[channel_id] = _Channel(topic, schemas[schema_id])
        elif opcode == _OP_CHUNK_INDEX:
            start_ns, end_ns, offset, length = _CHUNK_INDEX_HEAD.unpack_from(record, 0)
            indexes = _u64_map(record, _CHUNK_INDEX_HEAD.size)
            if not len(_MCAP_MAGIC) <= offset < offset + length <= summary_start:
                raise _Corrupt(f"chunk index for bytes {offset}+{length}, outside the data section")
            if any(not offset + length <= at < summary_start for at in indexes.values()):
                raise _Corrupt(f"a message index of the chunk at byte {offset} is outside the data section")
            chunks.append(_ChunkIndex(start_ns, end_ns, offset, length, indexes))
        elif opcode == _OP_STATISTICS:
            message_count, _, _, _, _, chunk_count, _, _ = _STATISTICS_HEAD.unpack_from(record, 0)
            statistics.append((message_count, chunk_count, _u64_map(record, _STATISTICS_HEAD.size)))
    if len(statistics) != 1:
        raise _Corrupt(f"{len(statistics)} statistics records, expected one")
    message_count, chunk_count, counts = statistics[0]
    if chunk_count != len(chunks) or message_count != sum(counts.values()):
        raise _Corrupt("the statistics do not match the chunk indexes")
    listed = {cid for chunk in chunks for cid in chunk.message_indexes}
    if not listed <= channels.keys():
        raise _Corrupt("a chunk holds messages of a channel the summary does not define")
    if any(count and cid not in listed for cid, count in counts.items()):
        raise _Corrupt("messages of a channel no chunk's message index lists")
    return _Summary(schemas, definitions, channels, counts, chunks)


def _u64_map(record: memoryview, pos: int) -> dict[int, int]:
    """A ``Map<uint16, uint64>`` field (u32 byte length, then the entries) at ``pos``."""
    (length,) = _U32.unpack_from(record, pos)
    pos += 4
    if length % _CHANNEL_COUNT.size or pos + length > len(record):
        raise _Corrupt(f"a map of {length} bytes does not fit its record")
    return dict(_CHANNEL_COUNT.iter_unpack(record[pos : pos + length]))


def _metadata_in_chunks(summary: _Summary, stream: IO[bytes]) -> list[tuple[int, int, int]]:
    """Where the episode metadata messages are (:attr:`_Summary.metadata`), from their message
    indexes; :class:`_Corrupt` unless every chunk index points at a chunk record of its length and
    those message indexes are whole."""
    wanted = {cid for cid, channel in summary.channels.items() if channel.topic == EPISODE_META_TOPIC}
    found: list[tuple[int, int, int]] = []
    for number, chunk in enumerate(summary.chunks):
        stream.seek(chunk.offset)
        head = stream.read(_RECORD_HEAD.size)
        if len(head) != _RECORD_HEAD.size or _RECORD_HEAD.unpack(head) != (
            _OP_CHUNK,
            chunk.length - _RECORD_HEAD.size,
        ):
            raise _Corrupt(f"the chunk index for byte {chunk.offset} points at no chunk record of its length")
        for channel_id in wanted & chunk.message_indexes.keys():
            stream.seek(chunk.message_indexes[channel_id])
            head = stream.read(_RECORD_HEAD.size)
            if len(head) != _RECORD_HEAD.size:
                raise _Corrupt("a message index is cut short")
            opcode, length = _RECORD_HEAD.unpack(head)
            record = memoryview(stream.read(length))
            # Channel id, then its entries (u32 byte length): https://mcap.dev/spec#message-index-op0x07
            if (
                opcode != _OP_MESSAGE_INDEX
                or len(record) != length
                or _U16.unpack_from(record, 0)[0] != channel_id
            ):
                raise _Corrupt(f"no message index of channel {channel_id} where the chunk index says")
            (entries,) = _U32.unpack_from(record, 2)
            if entries % _INDEX_ENTRY.size or 6 + entries > length:
                raise _Corrupt(f"the message index of channel {channel_id} does not fit its record")
            found += [
                (log_time, number, offset)
                for log_time, offset in _INDEX_ENTRY.iter_unpack(record[6 : 6 + entries])
            ]
    return found


class BagReader:
    """Read a bag's messages in time order, recovering what a killed writer left.

    ``path``: a bag directory (with or without ``metadata.yaml``) or one ``.mcap`` file. Opening
    learns the topics, counts, times and where the chunks are. A file closed properly has them in its
    MCAP summary section, which is read (with the chunk holding the newest episode metadata message)
    when it checks out against the file; any other file is scanned record by record, decompressing
    and checking each chunk. :meth:`messages` reads the chunks, in time order, one at a time. What
    cannot be read is skipped and reported (:attr:`problems`, and a :class:`BagWarning` each): at
    opening for a scanned file, when its chunk is read for one indexed from its summary. A path that
    is no bag at all raises :class:`BagError`.
    """

    def __init__(self, path: Path, *, store: Typestore | None = None) -> None:
        self.path = path
        self._store = store or typestore()
        self.problems: list[str] = []
        self.files = _storage_files(path)
        # Schema names and channels by (file index, id): ids are per file.
        self._schemas: dict[tuple[int, int], str] = {}
        self._definitions: dict[str, str] = {}
        self._own_store: Typestore | None = None
        self._channels: dict[tuple[int, int], _Channel] = {}
        self._segments: list[_Segment] = []
        self._counts: dict[str, int] = {}
        self._types: dict[str, str] = {}
        self._meta: tuple[int, EpisodeMetadata] | None = None
        self.complete = True
        """Every file ended with its footer and every record read so far could be read."""
        self.scanned: list[Path] = []
        """The files indexed by a scan: they had no summary section, or one that did not check out."""
        for index, file in enumerate(self.files):
            self._index(index, file)
        self._segments.sort(key=lambda s: s.start_ns)

    def _problem(self, text: str) -> None:
        self.problems.append(text)
        self.complete = False
        warnings.warn(text, BagWarning, stacklevel=3)

    @property
    def typestore(self) -> Typestore:
        """The types to read this bag's messages with: pld_msgs' types as the bag recorded them.

        A bag recorded before one of our messages changed (a field added) keeps its old
        definition in its schemas; reading it with today's would fail. Standard ROS types are
        today's store's (they do not change within a distribution)."""
        if self._own_store is None:
            self._own_store = self._store
            changed = {
                name: text
                for name, text in self._definitions.items()
                if name.startswith("pld_msgs/")
                and name in self._store.fielddefs
                and text != self._store.generate_msgdef(name, ros_version=2)[0]
            }
            if changed:
                store = get_typestore(Stores.ROS2_JAZZY)
                types: dict[str, Any] = {}
                for name, text in changed.items():
                    types.update(get_types_from_msg(text, name))
                for name in self._store.fielddefs:
                    if name.startswith("pld_msgs/") and name not in types:
                        types[name] = self._store.fielddefs[name]
                store.register(types)
                self._own_store = store
        return self._own_store

    @property
    def topics(self) -> tuple[TopicInfo, ...]:
        return tuple(TopicInfo(t, self._types[t], self._counts.get(t, 0)) for t in sorted(self._types))

    @property
    def metadata(self) -> EpisodeMetadata | None:
        """The last episode metadata message in the bag (see the module docstring)."""
        return None if self._meta is None else self._meta[1]

    @property
    def start_ns(self) -> int | None:
        return min((s.start_ns for s in self._segments), default=None)

    @property
    def end_ns(self) -> int | None:
        return max((s.end_ns for s in self._segments), default=None)

    # -- the index pass ------------------------------------------------------------------------

    def _index(self, index: int, file: Path) -> None:
        try:
            size = file.stat().st_size
            with file.open("rb") as stream:
                if stream.read(len(_MCAP_MAGIC)) != _MCAP_MAGIC:
                    self._problem(f"{file}: not an MCAP file (wrong magic bytes); skipped")
                    return
                summary = _read_summary(stream, size)
                if summary is not None:
                    self._index_summary(index, file, stream, summary)
                    return
                self.scanned.append(file)
                stream.seek(len(_MCAP_MAGIC))
                self._index_records(index, file, stream, size)
        except OSError as exc:
            self._problem(f"{file}: cannot read: {exc.strerror}")

    def _index_summary(self, index: int, file: Path, stream: IO[bytes], summary: _Summary) -> None:
        for schema_id, name in summary.schemas.items():
            self._schemas[(index, schema_id)] = name
        self._definitions.update(summary.definitions)
        for channel_id, channel in summary.channels.items():
            self._channels[(index, channel_id)] = channel
            self._types.setdefault(channel.topic, channel.msgtype)
        for channel_id, count in summary.counts.items():
            if count:
                topic = summary.channels[channel_id].topic
                self._counts[topic] = self._counts.get(topic, 0) + count
        damaged = self._newest_metadata(index, file, stream, summary)
        for number, chunk in enumerate(summary.chunks):
            if chunk.message_indexes and number not in damaged:
                self._segments.append(
                    _Segment(
                        file,
                        index,
                        chunk.offset + _RECORD_HEAD.size,
                        chunk.length - _RECORD_HEAD.size,
                        True,
                        chunk.start_ns,
                        chunk.end_ns,
                        set(chunk.message_indexes),
                    )
                )

    def _newest_metadata(self, index: int, file: Path, stream: IO[bytes], summary: _Summary) -> set[int]:
        """Take the newest valid episode metadata message of a file indexed from its summary, if it
        is newer than the one known (as the scan does: the newest valid one, the last in file order
        among equal times); only the chunks down to it are read. Returns the chunks found damaged
        (reported)."""
        damaged: set[int] = set()
        for log_time, number, offset in sorted(summary.metadata, reverse=True):
            if self._meta is not None and log_time < self._meta[0]:
                break
            if number in damaged:
                continue
            chunk = summary.chunks[number]
            try:
                stream.seek(chunk.offset + _RECORD_HEAD.size)
                records = _chunk_content(memoryview(stream.read(chunk.length - _RECORD_HEAD.size)))
                opcode, length = _RECORD_HEAD.unpack_from(records, offset)
                start = offset + _RECORD_HEAD.size
                if opcode != _OP_MESSAGE or start + length > len(records):
                    raise _Corrupt(f"its message index points at no message (byte {offset} of its records)")
                meta = self._decode_metadata(records[start + _MESSAGE_HEAD.size : start + length])
            except (_Corrupt, struct.error) as exc:
                damaged.add(number)
                self._problem(f"{file}: chunk at byte {chunk.offset} skipped: {exc}")
                continue
            if meta is not None:
                self._meta = (log_time, meta)
                break
        return damaged

    def _index_records(self, index: int, file: Path, stream: IO[bytes], size: int) -> None:
        pos = len(_MCAP_MAGIC)
        while True:
            head = stream.read(_RECORD_HEAD.size)
            if len(head) < _RECORD_HEAD.size:
                where = "at the end of a record" if not head else f"inside a record header at byte {pos}"
                self._problem(
                    f"{file}: the file ends {where} without the MCAP footer (writer killed or file cut): "
                    "everything before is read"
                )
                return
            opcode, length = _RECORD_HEAD.unpack(head)
            start = pos + _RECORD_HEAD.size
            if start + length > size:
                kind = _RECORD_NAMES.get(opcode, f"0x{opcode:02x}")
                self._problem(
                    f"{file}: the file ends inside a {kind} record at byte {pos} ({start + length - size} "
                    "bytes missing; writer killed or file cut): everything before it is read"
                )
                return
            if opcode == _OP_FOOTER:
                return
            if opcode in (_OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK):
                content = memoryview(stream.read(length))
                try:
                    self._index_record(index, file, opcode, content, start)
                except (_Corrupt, struct.error, UnicodeDecodeError) as exc:
                    self._problem(
                        f"{file}: {_RECORD_NAMES.get(opcode, 'record')} at byte {pos} skipped: {exc}"
                    )
            else:
                stream.seek(length, os.SEEK_CUR)
            pos = start + length

    def _index_record(self, index: int, file: Path, opcode: int, content: memoryview, offset: int) -> None:
        if opcode == _OP_CHUNK:
            start_ns, end_ns, _, _ = _CHUNK_HEAD.unpack_from(content, 0)
            segment = _Segment(file, index, offset, len(content), True, start_ns, end_ns)
            for inner, record in _records(_chunk_content(content)):
                self._index_inner(index, inner, record, segment)
            if segment.channels:
                self._segments.append(segment)
        elif opcode == _OP_MESSAGE:
            (_, _, log_time, _) = _MESSAGE_HEAD.unpack_from(content, 0)
            segment = _Segment(file, index, offset, len(content), False, log_time, log_time)
            self._index_inner(index, opcode, content, segment)
            self._segments.append(segment)
        else:
            self._index_inner(index, opcode, content, None)

    def _index_inner(self, index: int, opcode: int, record: memoryview, segment: _Segment | None) -> None:
        if opcode == _OP_SCHEMA:
            schema_id, name, text = _schema(record)
            self._schemas[(index, schema_id)] = name
            if text is not None:
                self._definitions[name] = text
        elif opcode == _OP_CHANNEL:
            channel_id, schema_id = struct.unpack_from("<HH", record, 0)
            topic, _ = _string(record, 4)
            msgtype = self._schemas.get((index, schema_id))
            if msgtype is None:
                raise _Corrupt(f"channel {topic} names schema {schema_id}, which was not defined before it")
            self._channels[(index, channel_id)] = _Channel(topic, msgtype)
            self._types.setdefault(topic, msgtype)
        elif opcode == _OP_MESSAGE and segment is not None:
            channel_id, _, log_time, _ = _MESSAGE_HEAD.unpack_from(record, 0)
            channel = self._channels.get((index, channel_id))
            if channel is None:
                raise _Corrupt(f"message of channel {channel_id}, which was not defined before it")
            segment.channels.add(channel_id)
            self._counts[channel.topic] = self._counts.get(channel.topic, 0) + 1
            if channel.topic == EPISODE_META_TOPIC and (self._meta is None or log_time >= self._meta[0]):
                meta = self._decode_metadata(record[_MESSAGE_HEAD.size :])
                if meta is not None:
                    self._meta = (log_time, meta)

    def _decode_metadata(self, data: memoryview) -> EpisodeMetadata | None:
        """An episode metadata message, or None (reported) when it is not valid."""
        source = f"{self.path} {EPISODE_META_TOPIC}"
        try:
            message: Any = self._store.deserialize_cdr(bytes(data), EPISODE_META_TYPE)
            return EpisodeMetadata.from_json(str(message.data), source)
        except SerdeError as exc:
            self._problem(f"{source}: a message is not a std_msgs/String ({exc}); ignored")
        except BagError as exc:
            self._problem(f"{exc}; ignored")
        return None

    # -- the message pass ----------------------------------------------------------------------

    def messages(self, topics: Collection[str] | None = None) -> Iterator[BagMessage]:
        """Every readable message (of ``topics``, default all) in time order (file order for equal
        times). Only the chunks whose times overlap are in memory at once."""
        wanted = {key for key, channel in self._channels.items() if topics is None or channel.topic in topics}
        segments = [s for s in self._segments if any((s.index, c) in wanted for c in s.channels)]
        heap: list[tuple[int, int, BagMessage]] = []
        order = 0  # tie-breaker: keeps file order among equal times
        handles: dict[Path, IO[bytes]] = {}
        try:
            next_segment = 0
            while next_segment < len(segments) or heap:
                # A segment may hold messages older than the oldest waiting one only if it starts
                # before it: read every such segment before yielding.
                while next_segment < len(segments) and (
                    not heap or segments[next_segment].start_ns <= heap[0][0]
                ):
                    segment = segments[next_segment]
                    next_segment += 1
                    for message in self._read_segment(segment, wanted, handles):
                        heapq.heappush(heap, (message.timestamp_ns, order, message))
                        order += 1
                if heap:
                    yield heapq.heappop(heap)[2]
        finally:
            for handle in handles.values():
                handle.close()

    def _read_segment(
        self, segment: _Segment, wanted: set[tuple[int, int]], handles: dict[Path, IO[bytes]]
    ) -> list[BagMessage]:
        try:
            handle = handles.get(segment.file) or handles.setdefault(segment.file, segment.file.open("rb"))
            handle.seek(segment.offset)
            content = memoryview(handle.read(segment.length))
            if len(content) != segment.length:
                raise _Corrupt("the file got shorter since it was indexed")
            records = _records(_chunk_content(content)) if segment.chunk else iter([(_OP_MESSAGE, content)])
            messages = []
            for opcode, record in records:
                if opcode != _OP_MESSAGE:
                    continue
                channel_id, _, log_time, _ = _MESSAGE_HEAD.unpack_from(record, 0)
                if (segment.index, channel_id) in wanted:
                    channel = self._channels[(segment.index, channel_id)]
                    data = bytes(record[_MESSAGE_HEAD.size :])
                    messages.append(BagMessage(channel.topic, log_time, data, channel.msgtype))
            return messages
        except (OSError, _Corrupt, struct.error, UnicodeDecodeError) as exc:
            kind = "chunk" if segment.chunk else "message"
            self._problem(
                f"{segment.file}: {kind} at byte {segment.offset - _RECORD_HEAD.size} skipped: {exc}"
            )
            return []


def _storage_files(path: Path) -> list[Path]:
    """The MCAP files of a bag: those ``metadata.yaml`` lists, else every ``*.mcap`` in the directory."""
    if not path.exists():
        raise BagError(f"{path}: no such bag")
    if path.is_file():
        if path.suffix != ".mcap":
            raise BagError(f"{path}: not a bag (expected a bag directory or an .mcap file)")
        return [path]
    listed: list[Path] = []
    metadata_file = path / "metadata.yaml"
    if metadata_file.is_file():
        listed = _files_in_metadata(metadata_file)
    files = listed or sorted(path.glob("*.mcap"))
    if not files:
        found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
        raise BagError(f"{path}: no .mcap file in this directory (found: {found})")
    return files


def _files_in_metadata(metadata_file: Path) -> list[Path]:
    """The storage files a ``metadata.yaml`` names; [] if it cannot be read (a scan finds them)."""
    import yaml

    try:
        info = yaml.safe_load(metadata_file.read_text())["rosbag2_bagfile_information"]
        storage, names = info["storage_identifier"], info["relative_file_paths"]
        mode = info.get("compression_mode") or ""
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return []
    if storage != "mcap":
        raise BagError(f"{metadata_file.parent}: storage {storage!r}; the pld tools read MCAP bags only")
    if mode not in ("", "none"):
        raise BagError(
            f"{metadata_file.parent}: compression mode {mode!r}; the pld tools read MCAP chunk compression "
            "only (ros2 bag record --storage-preset-profile zstd_fast, or no compression)"
        )
    files = [metadata_file.parent / Path(name).name for name in names]
    return [f for f in files if f.exists()] if any(f.exists() for f in files) else []


def _complete_info(path: Path) -> BagInfo | None:
    """Info from rosbags' index, for a bag it opens; None otherwise."""
    try:
        with Reader(path) as reader:
            topics = tuple(
                TopicInfo(name, info.msgtype or "", info.msgcount)
                for name, info in sorted(reader.topics.items())
            )
            custom = reader.storage.metadata.custom or {}
            count = reader.message_count
            start, end = reader.start_time, reader.end_time - 1
            files = tuple(sorted(path.glob("*.mcap"))) if path.is_dir() else (path,)
    except Exception:  # anything rosbags cannot open is scanned instead, and its problems reported
        return None
    text = custom.get(METADATA_KEY)
    problems: tuple[str, ...] = ()
    try:
        metadata = None if text is None else EpisodeMetadata.from_json(text, f"{path}/metadata.yaml")
    except BagError as exc:
        metadata, problems = None, (str(exc),)
    return BagInfo(
        path=path,
        files=files,
        size_bytes=sum(f.stat().st_size for f in files),
        topics=topics,
        start_ns=start if count else None,
        end_ns=end if count else None,
        metadata=metadata,
        complete=True,
        problems=problems,
    )


def bag_info(path: Path) -> BagInfo:
    """Topics, types, counts, times, episode metadata and size of a bag.

    A complete bag is described from its index (fast); any other is scanned with
    :class:`BagReader` and its problems are listed. Raises :class:`BagError` for a path that is no
    bag at all.
    """
    _storage_files(path)  # refuses what is not an MCAP bag, with the reason
    info = _complete_info(path)
    if info is not None:
        return info
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BagWarning)  # they are returned as problems
        reader = BagReader(path)
    files = tuple(reader.files)
    return BagInfo(
        path=path,
        files=files,
        size_bytes=sum(f.stat().st_size for f in files if f.exists()),
        topics=reader.topics,
        start_ns=reader.start_ns,
        end_ns=reader.end_ns,
        metadata=reader.metadata,
        complete=False,
        problems=tuple(reader.problems)
        or (
            ("not closed properly (no metadata.yaml or MCAP summary): recovered by scanning",)
            if reader.scanned
            else ("no readable metadata.yaml: described from the MCAP summary",)
        ),
    )
