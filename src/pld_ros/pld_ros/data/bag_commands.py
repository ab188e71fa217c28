"""``pld bag ...``: look into a recorded bag and play it back into a ROS graph.

Mounted by the main CLI as ``pld bag``; until then ``python -m pld_ros.data.bag_commands ...``.

- ``info BAG``: files, size, times, episode metadata, and per topic its type, count and rate. A
  bag that was not closed (a killed recorder, a cut copy) is scanned and reported as incomplete,
  with what could not be read; a path that is no bag is a one-line error (exit 2).
- ``play BAG``: republishes the recorded messages as they were recorded, serialized (nothing is
  deserialized), on their recorded topic names, at their recorded spacing divided by ``--rate``.
  Publishers are reliable and transient local with a depth of :data:`PLAY_DEPTH`: that QoS
  matches every subscriber (best effort or reliable, volatile or transient local), so the nodes
  of the graph (e.g. the recorder or the replay buffer, which ask for transient local episode
  events) take the messages as from the original publishers. ``--clock`` also publishes the bag's
  time on ``/clock`` (``rosgraph_msgs/Clock``) before each message and at least every
  :data:`CLOCK_PERIOD` s, for nodes started with ``use_sim_time``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from pld_ros.data.bags import BagError, BagInfo, BagReader, bag_info, message_class

app = typer.Typer(
    help="Recorded bags (rosbag2, MCAP): inspect them and play them back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PLAY_DEPTH = 10
"""Messages each play publisher keeps for late transient-local subscribers (our choice)."""
ACK_TIMEOUT = 2.0
"""s the player waits, per topic, for reliable subscribers to acknowledge the last messages."""
CLOCK_PERIOD = 0.025
"""s: the longest /clock stays unchanged during ``play --clock`` (40 Hz, as ``ros2 bag play``)."""
DISCOVERY_DELAY = 1.0
"""s ``play`` waits after creating its publishers, by default, so that subscribers have matched
them before the first message (DDS discovery on one host takes well under a second)."""

WAIT_REPORT_PERIOD = 5.0
"""s between two "waiting for subscribers" lines of ``play --wait-for-subscribers``."""

BagArg = Annotated[Path, typer.Argument(help="A bag directory (or one .mcap file).")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"pld bag: {message}", err=True)
    return typer.Exit(2)


def _time(stamp_ns: int | None) -> str:
    if stamp_ns is None:
        return "-"
    utc = datetime.fromtimestamp(stamp_ns * 1e-9, timezone.utc)
    return f"{utc:%Y-%m-%d %H:%M:%S}.{stamp_ns % 10**9 // 10**6:03d} UTC ({stamp_ns} ns)"


def format_info(info: BagInfo) -> str:
    """The plain-text table ``pld bag info`` prints."""
    meta = info.metadata
    seconds = info.duration_ns * 1e-9
    rows = [
        ("bag", str(info.path)),
        (
            "status",
            "complete" if info.complete else "INCOMPLETE (not closed properly; read what is readable)",
        ),
        ("files", ", ".join(f.name for f in info.files)),
        (
            "size",
            f"{info.size_bytes / 1e6:.1f} MB" if info.size_bytes >= 10**6 else f"{info.size_bytes} bytes",
        ),
        ("start", _time(info.start_ns)),
        ("end", _time(info.end_ns)),
        ("duration", f"{seconds:.3f} s"),
        ("messages", str(info.message_count)),
    ]
    if meta is not None:
        episode = "session" if meta.episode_id is None else str(meta.episode_id)
        if meta.mode is not None:
            episode += f", {meta.mode.name.lower()}"
        if meta.probe_steps is not None:
            episode += f", k={meta.probe_steps}"
        if meta.episode_id is not None:
            outcome = meta.outcome.name.lower() if meta.outcome is not None else "not ended"
            episode += f", {outcome}" + (f" ({meta.reason})" if meta.reason else "")
        rate = f", control rate {meta.control_rate:g} Hz" if meta.control_rate is not None else ""
        rows += [("robot", f"{meta.robot_id} (profile {meta.profile}{rate})"), ("episode", episode)]
        if meta.prompt:
            rows.append(("prompt", meta.prompt))
        if meta.policy_versions:
            rows.append(("policies", ", ".join(f"{k} {v}" for k, v in sorted(meta.policy_versions.items()))))
        if meta.phases:
            first = meta.phases[0].stamp_ns
            marks = [
                f"{m.phase.name.lower()}@{m.step} (+{(m.stamp_ns - first) * 1e-9:.2f} s)" for m in meta.phases
            ]
            rows.append(("phases", ", ".join(marks)))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name + ':':<{width + 1}} {value}" for name, value in rows]
    table = [("topic", "type", "count", "rate")]
    for topic in info.topics:
        rate = f"{(topic.count - 1) / seconds:.1f} Hz" if topic.count > 1 and seconds > 0 else "-"
        table.append((topic.name, topic.msgtype, str(topic.count), rate))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines.append("")
    for row in table:
        name, msgtype, count, rate = row
        lines.append(
            f"  {name:<{widths[0]}}  {msgtype:<{widths[1]}}  {count:>{widths[2]}}  {rate:>{widths[3]}}"
        )
    if info.problems:
        lines += ["", "problems:", *(f"  - {problem}" for problem in info.problems)]
    return "\n".join(lines)


@app.command()
def info(bag: BagArg) -> None:
    """Print a bag's files, times, episode metadata and topics (type, count, rate).

    A bag left unclosed by a killed recorder is scanned instead and its unreadable parts listed.
    """
    try:
        typer.echo(format_info(bag_info(bag)))
    except BagError as exc:
        raise _fail(str(exc)) from None


def play_once(
    reader: BagReader,
    topics: set[str],
    rate: float,
    publish: Callable[[str, bytes], None],
    publish_clock: Callable[[int], None] | None,
) -> int:
    """Play the bag once in real time scaled by ``rate``; returns the messages published.

    The schedule is absolute (message i at ``start + (t_i - t_0) / rate``), so time spent
    publishing does not accumulate into drift.
    """
    start: float | None = None
    first_ns = 0
    published = 0
    for message in reader.messages(topics):
        if start is None:
            start, first_ns = time.monotonic(), message.timestamp_ns
        due = start + (message.timestamp_ns - first_ns) * 1e-9 / rate
        while (wait := due - time.monotonic()) > 0:
            if publish_clock is not None:
                time.sleep(min(wait, CLOCK_PERIOD))
                # Never past the next message: /clock only moves forwards.
                now_ns = first_ns + int((time.monotonic() - start) * rate * 1e9)
                publish_clock(min(now_ns, message.timestamp_ns))
            else:
                time.sleep(wait)
        if publish_clock is not None:
            publish_clock(message.timestamp_ns)
        publish(message.topic, message.data)
        published += 1
    return published


@app.command()
def play(
    bag: BagArg,
    rate: Annotated[float, typer.Option(min=0.001, help="Speed factor: 2 plays twice as fast.")] = 1.0,
    loop: Annotated[bool, typer.Option("--loop", help="Start over at the end, until Ctrl-C.")] = False,
    topics: Annotated[
        list[str] | None, typer.Option("--topics", help="Play only this topic (repeat for several).")
    ] = None,
    clock: Annotated[bool, typer.Option("--clock", help="Also publish the bag's time on /clock.")] = False,
    delay: Annotated[
        float, typer.Option(min=0.0, help="Seconds to wait for subscribers before the first message.")
    ] = DISCOVERY_DELAY,
    wait_for_subscribers: Annotated[
        bool,
        typer.Option(
            "--wait-for-subscribers",
            help="Before the first message, wait until every played topic has a subscriber (then --delay).",
        ),
    ] = False,
) -> None:
    """Republish a bag's messages with their recorded timing (scaled by --rate), until the end or Ctrl-C."""
    try:
        reader = BagReader(bag)
    except BagError as exc:
        raise _fail(str(exc)) from None
    for problem in reader.problems:
        typer.echo(f"pld bag: warning: {problem}", err=True)
    recorded = {t.name: t.msgtype for t in reader.topics}
    unknown = sorted(set(topics or ()) - set(recorded))
    if unknown:
        raise _fail(
            f"{bag}: no topic {', '.join(unknown)} in this bag (it has: {', '.join(sorted(recorded))})"
        )
    # rclpy is imported here, not at the top: `pld --help` and `pld bag info` must not pay for it.
    import rclpy
    from rclpy.duration import Duration
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    qos = QoSProfile(
        depth=PLAY_DEPTH, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
    )
    from rclpy.signals import SignalHandlerOptions

    # Without rclpy's handlers, Ctrl-C (and SIGTERM, made the same) end the playback through
    # KeyboardInterrupt below; rclpy's would invalidate the context under a publish instead.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    node = Node("pld_bag_play")
    total, started = 0, time.monotonic()

    def publish(topic: str, data: bytes) -> None:
        nonlocal total
        publishers[topic].publish(data)
        total += 1

    try:
        publishers: dict[str, Any] = {}
        for name in topics or sorted(recorded):
            try:
                publishers[name] = node.create_publisher(message_class(recorded[name]), name, qos)
            except BagError as exc:
                typer.echo(f"pld bag: warning: {name} not played: {exc}", err=True)
        publish_clock = _clock_publisher(node) if clock else None
        if wait_for_subscribers:
            _wait_for_subscribers(publishers)
        time.sleep(delay)
        started = time.monotonic()
        # A pass that plays nothing (no message of the chosen topics) ends a loop too.
        while play_once(reader, set(publishers), rate, publish, publish_clock) and loop:
            pass
        # Exiting right after the last publish can drop it: reliable delivery needs this process
        # alive until the subscribers acknowledge (a best-effort subscriber never does: bounded).
        for publisher in publishers.values():
            publisher.wait_for_all_acked(Duration(seconds=ACK_TIMEOUT))
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    typer.echo(f"played {total} message(s) in {time.monotonic() - started:.1f} s")


def _wait_for_subscribers(publishers: dict[str, Any]) -> None:
    """Block until each publisher has a subscription, saying which ones it waits for (until Ctrl-C)."""
    said = 0.0
    while missing := sorted(name for name, p in publishers.items() if p.get_subscription_count() == 0):
        if time.monotonic() - said > WAIT_REPORT_PERIOD:
            typer.echo(f"waiting for subscribers of {', '.join(missing)}")
            said = time.monotonic()
        time.sleep(0.05)


def _clock_publisher(node: Any) -> Callable[[int], None]:
    """Publishes a bag time (ns) on /clock."""
    clock_class = message_class("rosgraph_msgs/msg/Clock")
    publisher = node.create_publisher(clock_class, "/clock", 10)

    def publish(stamp_ns: int) -> None:
        message = clock_class()
        message.clock.sec, message.clock.nanosec = divmod(stamp_ns, 10**9)
        publisher.publish(message)

    return publish


if __name__ == "__main__":
    app()
