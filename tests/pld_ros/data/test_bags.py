"""Bags without ROS: BagWriter's bags open with rosbags and BagReader; BagReader indexes a closed bag
from its MCAP summary exactly as a scan would, scans a file whose summary is missing or wrong, recovers
what a killed writer (a real SIGKILLed process) or a damaged file leaves, and says what it could not
read."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rosbags.rosbag2 import Reader, ReaderError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from pld_ros.core.episode import Outcome, Phase, RunMode
from pld_ros.data.bags import (
    EPISODE_META_TOPIC,
    METADATA_KEY,
    BagError,
    BagInfo,
    BagReader,
    BagWarning,
    BagWriter,
    EpisodeMetadata,
    PhaseMark,
    bag_info,
    pld_msgs_directory,
    typestore,
)

CAMERA, ACTION = "/robot/cameras/wrist/image_raw", "/robot/policy/base/action"
IMAGE, BASE_ACTION = "sensor_msgs/msg/Image", "pld_msgs/msg/BaseAction"
T0 = 1_700_000_000_000_000_000
META = EpisodeMetadata(
    robot_id="rig",
    profile="pick",
    prompt="pick up the cube",
    episode_id=7,
    mode=RunMode.PROBE_TAKEOVER,
    probe_steps=4,
    phases=(PhaseMark(Phase.PROBING, 0, T0), PhaseMark(Phase.TAKEOVER, 4, T0 + 200_000_000)),
    policy_versions={"base": "onnx:pick.onnx", "residual": "3"},
    control_rate=20.0,
)


def image(index: int, height: int = 48, width: int = 64, noise: bool = False) -> bytes:
    """A serialized rgb8 image whose frame_id is ``index``; noisy pixels do not compress."""
    store = typestore()
    pixels = (
        np.random.default_rng(index).integers(0, 256, height * width * 3, dtype=np.uint8)
        if noise
        else np.full(height * width * 3, index % 256, np.uint8)
    )
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=index, nanosec=0),
        frame_id=str(index),
    )
    message = store.types[IMAGE](
        header=header,
        height=height,
        width=width,
        encoding="rgb8",
        is_bigendian=0,
        step=width * 3,
        data=pixels,
    )
    return bytes(store.serialize_cdr(message, IMAGE))


def base_action(index: int) -> bytes:
    store = typestore()
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
        frame_id="",
    )
    message = store.types[BASE_ACTION](
        header=header,
        episode_id=7,
        action=np.full(7, index, np.float32),
        fresh=True,
        age=0.0,
        chunk_index=0,
        chunk_id=index,
        chunks_averaged=1,
        policy="onnx:pick.onnx",
    )
    return bytes(store.serialize_cdr(message, BASE_ACTION))


def frame_id(data: bytes) -> int:
    message: Any = typestore().deserialize_cdr(data, IMAGE)
    return int(message.header.frame_id)


def write_episode(
    path: Path, frames: int = 60, *, big: bool = False, noise: bool = False, **writer: Any
) -> list[tuple[str, int, bytes]]:
    """A bag of ``frames`` camera images at 30 Hz and base actions at 20 Hz; what was written.
    ``big``: 640x480 images, two per chunk; else 64x48, one chunk in all. ``noise``: random pixels,
    which zstd cannot compress; else uniform ones."""
    written = []
    with BagWriter(path, **writer) as bag:
        bag.add_topic(CAMERA, IMAGE)
        bag.add_topic(ACTION, BASE_ACTION)
        bag.write_metadata(META, T0)
        for index in range(frames):
            stamp = T0 + index * 33_333_333
            frame = image(index, 480, 640, noise=noise) if big else image(index, noise=noise)
            written.append((CAMERA, stamp, frame))
            bag.write(*written[-1])
            if index % 3 != 2:
                written.append((ACTION, stamp + 1_000_000, base_action(index)))
                bag.write(*written[-1])
        bag.write_metadata(EpisodeMetadata(**{**META.__dict__, "outcome": Outcome.SUCCESS}), written[-1][1])
    return written


def data_messages(reader: BagReader) -> list[tuple[str, int, bytes]]:
    return [(m.topic, m.timestamp_ns, m.data) for m in reader.messages() if m.topic != EPISODE_META_TOPIC]


def test_a_written_bag_is_complete_and_reads_back_identically(tmp_path: Path) -> None:
    path = tmp_path / "episode"
    written = write_episode(path)
    ended = EpisodeMetadata(**{**META.__dict__, "outcome": Outcome.SUCCESS})

    with Reader(path) as reader:  # the standard reader: metadata.yaml, summary, zstd chunks
        assert not reader.compression_mode  # zstd per chunk inside the MCAP, not a rosbag2 mode
        assert reader.message_count == len(written) + 2
        custom = reader.storage.metadata.custom or {}
        from_rosbags = [(c.topic, t, d) for c, t, d in reader.messages() if c.topic != EPISODE_META_TOPIC]
        action: Any = typestore().deserialize_cdr(from_rosbags[1][2], BASE_ACTION)
    assert from_rosbags == written
    assert action.policy == "onnx:pick.onnx" and action.action[0] == 0.0
    assert EpisodeMetadata.from_json(custom[METADATA_KEY], "metadata.yaml") == ended

    reader_ = BagReader(path)
    assert reader_.complete and not reader_.problems and not reader_.scanned  # from the summary
    assert data_messages(reader_) == written
    assert reader_.metadata == ended
    assert [m.topic for m in reader_.messages(topics={ACTION})] == [ACTION] * 40

    info = bag_info(path)
    assert info.complete and info.metadata == ended and not info.problems
    assert {(t.name, t.msgtype, t.count) for t in info.topics} == {
        (CAMERA, IMAGE, 60),
        (ACTION, BASE_ACTION, 40),
        (EPISODE_META_TOPIC, "std_msgs/msg/String", 2),
    }
    assert (info.start_ns, info.end_ns, info.message_count) == (T0, written[-1][1], 102)
    raw = sum(len(d) for _, _, d in written)
    assert info.size_bytes == (path / "episode.mcap").stat().st_size < raw / 5  # uniform images: zstd


def test_messages_come_in_time_order_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "bag"
    big = image(0, 480, 640)  # 900 KB: every chunk (1 MiB) holds two
    with BagWriter(path) as bag:
        bag.add_topic("/a", IMAGE)
        bag.add_topic("/b", IMAGE)
        for index in range(6):  # /a at even times, then /b at odd times: chunks overlap in time
            bag.write("/a", T0 + 2 * index, big)
        for index in range(6):
            bag.write("/b", T0 + 2 * index + 1, big)
    messages = list(BagReader(path).messages())
    assert [m.timestamp_ns - T0 for m in messages] == list(range(12))
    assert [m.topic for m in messages] == ["/a", "/b"] * 6


def test_a_truncated_bag_keeps_every_complete_chunk(tmp_path: Path) -> None:
    path = tmp_path / "full"
    written = write_episode(path, 30, big=True, noise=True)
    data = (path / "full.mcap").read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReaderError, match="magic"):  # what rosbags does with a cut bag
        Reader(cut).open()
    recovered = []
    # Cut inside chunks, then inside the footer: all chunks but the cut one, then everything.
    for length in (*(int(len(data) * f) for f in (0.3, 0.6, 0.9)), len(data) - 10):
        bag = tmp_path / f"cut_{length}"
        bag.mkdir()
        (bag / "cut.mcap").write_bytes(data[:length])
        with pytest.warns(BagWarning, match="ends inside"):
            reader = BagReader(bag)
        messages = data_messages(reader)
        assert messages == written[: len(messages)]  # a prefix, byte for byte, in order
        assert reader.metadata is not None and reader.metadata.episode_id == 7
        recovered.append(len(messages))
    assert recovered == sorted(recovered) and 0 < recovered[0] < recovered[-2] < recovered[-1] == len(written)


def test_a_damaged_chunk_is_skipped_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "bag"
    written = write_episode(path, 30, big=True)  # uniform images: the chunks are mostly zstd data
    mcap = path / "bag.mcap"
    damaged = bytearray(mcap.read_bytes())
    start, length = chunk_records(bytes(damaged))[len(chunk_records(bytes(damaged))) // 2]
    middle = start + length // 2
    damaged[middle : middle + 16] = b"\xff" * 16  # inside the middle chunk's compressed data
    mcap.write_bytes(bytes(damaged))
    reader = BagReader(path)  # indexed from the summary: the chunk is not read yet
    assert (reader.complete, reader.scanned) == (True, [])
    with pytest.warns(BagWarning, match=rf"chunk at byte {start - 9} skipped"):
        messages = data_messages(reader)
    assert 0 < len(messages) < len(written) and messages[-1] == written[-1]
    assert set(messages) < set(written)
    assert (reader.complete, len(reader.problems)) == (False, 1) and str(mcap) in reader.problems[0]
    # Without its summary the file is scanned: the same chunk is found at opening, the same kept.
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(damaged[: summary_start(bytes(damaged))])
    with pytest.warns(BagWarning) as caught:
        scanned = BagReader(cut)
    assert scanned.scanned == [cut] and data_messages(scanned) == messages
    assert f"chunk at byte {start - 9} skipped" in str(caught[0].message)


def test_a_damaged_chunk_with_the_newest_metadata_gives_way_to_the_one_before(tmp_path: Path) -> None:
    path = tmp_path / "bag"
    written = write_episode(path, 30, big=True)  # metadata in the first chunk, and (ended) in the last
    mcap = path / "bag.mcap"
    data = bytearray(mcap.read_bytes())
    start, _ = chunk_records(bytes(data))[-1]
    compression = start + 32  # after start, end, size (u64 each), CRC (u32) and the name's length
    assert data[compression : compression + 4] == b"zstd"
    data[compression : compression + 4] = b"zsxd"
    mcap.write_bytes(bytes(data))
    with pytest.warns(BagWarning, match=rf"chunk at byte {start - 9} skipped: unsupported chunk compression"):
        reader = BagReader(path)
    assert reader.scanned == [] and reader.metadata == META  # the first one: no outcome yet
    with warnings.catch_warnings():
        warnings.simplefilter("error", BagWarning)  # the damaged chunk was reported once, and left out
        messages = data_messages(reader)
    assert messages == written and len(reader.problems) == 1  # that chunk held the last metadata only


def summary_start(data: bytes) -> int:
    """Where the summary section of a whole MCAP file starts (spec: the footer record, opcode, u64
    length, u64 summary_start, u64 summary_offset_start, u32 CRC, is followed by the 8 magic bytes)."""
    start: int = struct.unpack_from("<BQQ", data, len(data) - 8 - 29)[2]
    return start


def test_a_closed_bag_is_indexed_from_its_summary_as_a_scan_would_index_it(tmp_path: Path) -> None:
    path = tmp_path / "bag"
    written = write_episode(path, 30, big=True, noise=True)  # two images per chunk: many chunks
    data = (path / "bag.mcap").read_bytes()
    cut = tmp_path / "cut.mcap"  # the same data section, as a killed writer leaves it
    cut.write_bytes(data[: summary_start(data)])
    summary = BagReader(path)
    with pytest.warns(BagWarning, match="without the MCAP footer"):
        scan = BagReader(cut)
    assert summary.scanned == [] and scan.scanned == [cut]
    assert summary.topics == scan.topics and summary.metadata == scan.metadata is not None
    assert (summary.start_ns, summary.end_ns) == (scan.start_ns, scan.end_ns) == (T0, written[-1][1])
    assert data_messages(summary) == data_messages(scan) == written
    assert [m.data for m in summary.messages({EPISODE_META_TOPIC})] == [
        m.data for m in scan.messages({EPISODE_META_TOPIC})
    ]
    assert summary.metadata is not None and summary.metadata.outcome is Outcome.SUCCESS  # the newest


def test_a_summary_is_used_only_when_it_checks_out_against_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bag"
    written = write_episode(path, 30, big=True)
    data = (path / "bag.mcap").read_bytes()
    summary = [(opcode, offset) for opcode, offset, _ in records(data) if offset > summary_start(data)]
    # The statistics record (0x0b) counts one message more than its channels' counts add up to.
    (statistics,) = [offset for opcode, offset in summary if opcode == 0x0B]
    (count,) = struct.unpack_from("<Q", data, statistics)
    assert count == len(written) + 2  # the images, the actions, two metadata messages
    wrong_count = bytearray(data)
    wrong_count[statistics : statistics + 8] = struct.pack("<Q", count + 1)
    # The last chunk index (0x08) points one byte past its chunk record (after start and end times).
    chunk_index = [offset for opcode, offset in summary if opcode == 0x08][-1] + 16
    (chunk,) = struct.unpack_from("<Q", data, chunk_index)
    assert chunk in {offset - 9 for offset, _ in chunk_records(data)}
    moved = bytearray(data)
    moved[chunk_index : chunk_index + 8] = struct.pack("<Q", chunk + 1)
    # The summary's CRC-32 (rosbags stores 0: none), over the summary and the footer up to the CRC.
    crc_at = len(data) - 8 - 4
    crc = zlib.crc32(data[summary_start(data) : crc_at])
    right_crc, wrong_crc = bytearray(data), bytearray(data)
    right_crc[crc_at : crc_at + 4] = struct.pack("<I", crc)
    wrong_crc[crc_at : crc_at + 4] = struct.pack("<I", crc ^ 1)
    for name, variant, scanned in (
        ("count", wrong_count, True),
        ("moved", moved, True),
        ("right_crc", right_crc, False),
        ("wrong_crc", wrong_crc, True),
    ):
        file = tmp_path / f"{name}.mcap"
        file.write_bytes(bytes(variant))
        reader = BagReader(file)  # no warning: the data section itself is whole
        assert reader.scanned == ([file] if scanned else []), name
        assert reader.complete and not reader.problems and data_messages(reader) == written


def records(data: bytes) -> list[tuple[int, int, int]]:
    """(opcode, offset, length) of the content of each record of a whole MCAP file, data and summary
    sections (spec: records of opcode, u64 length and content after the 8 magic bytes, up to the
    footer, 0x02)."""
    found: list[tuple[int, int, int]] = []
    pos = 8
    while True:
        opcode, length = struct.unpack_from("<BQ", data, pos)
        if opcode == 0x02:
            return found
        found.append((opcode, pos + 9, length))
        pos += 9 + length


def chunk_records(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of the content of each chunk record (0x06) of a whole MCAP file."""
    return [(offset, length) for opcode, offset, length in records(data) if opcode == 0x06]


def test_a_killed_writer_process_loses_only_its_open_chunk(tmp_path: Path) -> None:
    """A real SIGKILL: the child writes, reports what is durable, and kills itself."""
    path = tmp_path / "killed"
    child = textwrap.dedent(
        f"""
        import os, signal, time
        from pathlib import Path
        from tests.pld_ros.data.test_bags import CAMERA, IMAGE, image
        from pld_ros.data.bags import BagWriter
        bag = BagWriter(Path({str(path)!r}), chunk_period=0.05).open()
        bag.add_topic(CAMERA, IMAGE)
        for index in range(200):
            bag.write(CAMERA, {T0} + index * 10_000_000, image(index))
            time.sleep(0.002)
        print(bag.durable_messages, bag.messages, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[3],
    )
    assert result.returncode == -9, result.stderr
    durable, total = (int(n) for n in result.stdout.split())
    # Usually the last chunk is still open; on a loaded machine the last write may close it.
    assert 0 < durable <= total == 200
    with pytest.warns(BagWarning):
        reader = BagReader(path)
    ids = [frame_id(m.data) for m in reader.messages(topics={CAMERA})]
    assert ids == list(range(len(ids))) and len(ids) >= durable


def test_bag_info_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(BagError, match="no such bag"):
        bag_info(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match=r"no \.mcap file"):
        bag_info(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BagError, match="not a bag"):
        bag_info(tmp_path / "notes.txt")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "x.mcap").write_bytes(b"not an mcap file at all")
    info = bag_info(garbage)
    assert isinstance(info, BagInfo) and not info.complete and not info.topics
    assert "not an MCAP file" in info.problems[0]
    sqlite = tmp_path / "sqlite"
    sqlite.mkdir()
    (sqlite / "metadata.yaml").write_text(
        "rosbag2_bagfile_information: {storage_identifier: sqlite3, relative_file_paths: [x.db3]}\n"
    )
    with pytest.raises(BagError, match="storage 'sqlite3'"):
        bag_info(sqlite)


def test_a_bag_without_metadata_yaml_is_read_from_its_mcap_summary(tmp_path: Path) -> None:
    path = tmp_path / "bag"
    written = write_episode(path)
    (path / "metadata.yaml").unlink()
    info = bag_info(path)  # the MCAP file is whole; only rosbags' metadata.yaml is gone
    assert not info.complete and info.message_count == len(written) + 2
    assert info.problems == ("no readable metadata.yaml: described from the MCAP summary",)
    assert info.metadata is not None and info.metadata.outcome is Outcome.SUCCESS
    copy = tmp_path / "episode.mcap"
    shutil.copy(path / "bag.mcap", copy)
    assert data_messages(BagReader(copy)) == written


def test_episode_metadata_round_trips_and_rejects_bad_json() -> None:
    assert EpisodeMetadata.from_json(META.to_json(), "x") == META
    session = EpisodeMetadata(robot_id="rig", profile="pick")
    assert EpisodeMetadata.from_json(session.to_json(), "x") == session
    # A recorder from before the control rate was recorded wrote no such key.
    assert EpisodeMetadata.from_json('{"robot_id": "rig", "profile": "pick"}', "x") == session
    with pytest.raises(BagError, match=r"bag: invalid episode metadata \(ValueError: control_rate must be"):
        EpisodeMetadata.from_json('{"robot_id": "r", "profile": "p", "control_rate": -20}', "bag")
    with pytest.raises(
        BagError, match=r"bag/metadata.yaml: invalid episode metadata \(KeyError: 'robot_id'\)"
    ):
        EpisodeMetadata.from_json('{"profile": "p"}', "bag/metadata.yaml")
    with pytest.raises(BagError, match="KeyError: 'SOMETIMES'"):
        EpisodeMetadata.from_json('{"robot_id": "r", "profile": "p", "outcome": "sometimes"}', "bag")


def test_the_writer_refuses_unknown_types_and_existing_bags(tmp_path: Path) -> None:
    with BagWriter(tmp_path / "bag") as bag, pytest.raises(BagError, match="'my_msgs/msg/Thing' is not in"):
        bag.add_topic("/thing", "my_msgs/msg/Thing")
    with pytest.raises(BagError, match=r"cannot create the bag: .* exists already"):
        BagWriter(tmp_path / "bag")


def test_invalid_episode_metadata_is_reported_not_fatal(tmp_path: Path) -> None:
    store = typestore()
    path = tmp_path / "bag"
    with BagWriter(path) as bag:
        bag.add_topic(CAMERA, IMAGE)
        not_json = store.types["std_msgs/msg/String"](data="{not json")
        bag.write(EPISODE_META_TOPIC, T0, bytes(store.serialize_cdr(not_json, "std_msgs/msg/String")))
        bag.write(CAMERA, T0 + 1, image(0))
    with pytest.warns(BagWarning, match="invalid episode metadata"):
        reader = BagReader(path)
    assert reader.metadata is None and [m.topic for m in reader.messages({CAMERA})] == [CAMERA]
    metadata_file = path / "metadata.yaml"
    metadata_file.write_text(
        metadata_file.read_text().replace("custom_data: null", "custom_data: {pld.episode: '[1]'}")
    )
    info = bag_info(path)
    assert info.complete and info.metadata is None and "invalid episode metadata" in info.problems[0]


@pytest.mark.parametrize("closed", [True, False], ids=["closed", "cut"])
def test_a_bag_recorded_before_a_message_changed_reads_with_its_own_definition(
    tmp_path: Path, closed: bool
) -> None:
    """EpisodeEvent gained ``stage``; a bag recorded with the definition before it still reads."""
    current = typestore()
    event_type = "pld_msgs/msg/EpisodeEvent"
    old_definition = "\n".join(
        line
        for line in (pld_msgs_directory() / "EpisodeEvent.msg").read_text().splitlines()
        if not line.startswith("string stage")
    )
    old = get_typestore(Stores.ROS2_JAZZY)
    old.register(
        {
            name: fields
            for name, fields in current.fielddefs.items()
            if name.startswith("pld_msgs/") and name != event_type
        }
        | get_types_from_msg(old_definition, event_type)
    )
    assert old.fielddefs[event_type][1][-1][0] == "reason", "the definition before stage"
    stamp = old.types["builtin_interfaces/msg/Time"](sec=1, nanosec=0)
    value = old.types[event_type](
        header=old.types["std_msgs/msg/Header"](stamp=stamp, frame_id=""),
        robot_id="rig",
        episode_id=7,
        event=2,
        phase=old.types["pld_msgs/msg/EpisodePhase"](value=4),
        outcome=old.types["pld_msgs/msg/EpisodeOutcome"](value=1),
        mode=old.types["pld_msgs/msg/RunMode"](value=1),
        step=40,
        probe_steps=3,
        reason="success",
    )
    path = tmp_path / "old"
    with BagWriter(path, store=old) as writer:
        writer.add_topic("/episode/events", event_type)
        writer.write("/episode/events", 1_000_000_000, bytes(old.serialize_cdr(value, event_type)))
    if not closed:
        [file] = path.glob("*.mcap")
        data = file.read_bytes()
        file.write_bytes(data[: int(len(data) * 0.95)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BagWarning)
        reader = BagReader(path)
    [raw] = list(reader.messages())
    with pytest.raises(Exception):  # noqa: B017, PT011 - today's definition cannot read it
        current.deserialize_cdr(raw.data, event_type)
    event: Any = reader.typestore.deserialize_cdr(raw.data, event_type)
    assert (event.episode_id, event.step, event.reason, event.outcome.value) == (7, 40, "success", 1)
    # A bag recorded with today's definitions reads with today's store itself.
    with BagWriter(tmp_path / "new") as writer:
        writer.add_topic("/episode/events", event_type)
    assert BagReader(tmp_path / "new").typestore is current
