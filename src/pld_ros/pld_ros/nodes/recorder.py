"""Recorder node: writes what the graph publishes into rosbag2 bags (MCAP, zstd chunks), one bag per
episode or per session (the profile's ``recording`` section), with the episode's metadata.

- Topics: the profile's ``recording.topics`` (default :func:`~pld_ros.data.recording.default_topics`;
  relative names resolve in the node's namespace). Each is subscribed once it appears in
  the graph, with the type its publishers have, serialized (``raw=True``: nothing is deserialized
  here, images included), with the publishers' reliability and durability (best effort if any
  publisher is best effort: a reliable subscription would not match it). A topic whose type is not
  in the bag type store (:func:`~pld_ros.data.bags.typestore`) is reported and not recorded.
- ``episode/events`` (``EpisodeEvent``, from the supervisor) splits the recording by episode; it is
  subscribed from the start, as the supervisor publishes it (reliable, transient local).
- Each callback only stamps the message with the receive time and queues it: the writing, the
  split, the pre-roll (the newest camera, state and base action messages from before an episode's
  STARTED event) and the metadata happen in :class:`~pld_ros.data.recording.BagRecorder`'s writer
  thread. The metadata names the robot, profile, prompt and control rate
  (``supervisor.control_rate``) besides the episode.
- ``/diagnostics`` (``pld/recorder``): messages received, written, dropped (queue full), skipped
  (outside an episode), bytes and MB/s written, queue depth and size, the open bag, write errors,
  topics not seen yet; a heartbeat; one log line per closed bag.

Shutdown: SIGINT / SIGTERM write what is queued and close the open bag (a complete bag, episode
metadata in ``metadata.yaml``). After a SIGKILL the open bag lacks its summary and
``metadata.yaml``; it holds every chunk written so far (at most ``chunk_period`` s or 1 MiB lost),
which :class:`~pld_ros.data.bags.BagReader` reads.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

from pld_ros.data.bags import BagError, EpisodeMetadata, message_class, typestore
from pld_ros.data.recording import (
    END_GRACE,
    EVENT_TYPE,
    BagRecorder,
    RecordedTopic,
    counters,
    default_topics,
)
from pld_ros.nodes.diagnostics import MetricTopics, diagnostics_publisher, publish_status
from pld_ros.nodes.heartbeat import start_heartbeat
from pld_ros.nodes.qos import EVENTS_QOS
from pld_ros.nodes.runner import NodeConfigError, load_node_profile, run_node

EVENTS_TOPIC = "episode/events"
DISCOVERY_PERIOD = 1.0
"""s between two looks at the graph for topics still to subscribe."""
DIAGNOSTICS_PERIOD = 1.0
SUBSCRIPTION_DEPTH = 50
"""Messages the middleware keeps per recorded topic while the executor is busy (our choice: 1.7 s
of a 30 Hz camera, so a short stall of this process loses nothing even best effort)."""


def offered_qos(profile: QoSProfile) -> Qos:
    """A publisher's QoS as rosbags stores it (what ``ros2 bag play`` offers again)."""

    def duration(value: Any) -> QosTime:
        sec, nsec = divmod(int(value.nanoseconds), 10**9)
        return QosTime(sec, nsec)

    return Qos(
        history=QosHistory(int(profile.history)),
        depth=int(profile.depth),
        reliability=QosReliability(int(profile.reliability)),
        durability=QosDurability(int(profile.durability)),
        deadline=duration(profile.deadline),
        lifespan=duration(profile.lifespan),
        liveliness=QosLiveliness(int(profile.liveliness)),
        liveliness_lease_duration=duration(profile.liveliness_lease_duration),
        avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions),
    )


def subscription_qos(offered: list[QoSProfile]) -> QoSProfile:
    """A QoS that matches every publisher: reliable / transient local only if all of them are."""
    reliable = all(p.reliability == ReliabilityPolicy.RELIABLE for p in offered)
    latched = all(p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in offered)
    return QoSProfile(
        depth=SUBSCRIPTION_DEPTH,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


class RecorderNode(Node):
    """Records the graph's topics into bags; see the module docstring."""

    def __init__(self) -> None:
        super().__init__("recorder")
        profile = load_node_profile(self)
        recording = profile.recording
        wanted = list(recording.topics) if recording.topics is not None else default_topics(profile)
        end_grace = float(self.declare_parameter("end_grace", END_GRACE).value)
        if end_grace < 0.0:
            raise NodeConfigError(f"parameter end_grace must not be negative, got {end_grace}")
        try:
            store = typestore()
        except BagError as exc:
            raise NodeConfigError(str(exc)) from None
        self.profile = profile
        self._store = store
        self._events_topic = self.resolve_topic_name(EVENTS_TOPIC)
        self._wanted = {self.resolve_topic_name(name) for name in wanted}
        identity = EpisodeMetadata(
            robot_id=profile.robot_id,
            profile=profile.name,
            prompt=profile.policies.base.prompt if profile.policies is not None else "",
            control_rate=profile.supervisor.control_rate,
        )
        self.recorder = BagRecorder(
            recording.directory,
            identity,
            self.get_logger(),
            events_topic=self._events_topic,
            split=recording.split,
            compression=recording.compression,
            queue_bytes=int(recording.queue_megabytes * 2**20),
            chunk_period=recording.chunk_period,
            end_grace=end_grace,
            stage_prompts={
                stage.name: stage.prompt
                for stage in (profile.reward.stages if profile.reward else ())
                if stage.prompt
            },
            clock=lambda: self.get_clock().now().nanoseconds,
        )
        try:
            self.recorder.start()
        except OSError as exc:
            raise NodeConfigError(f"recording.directory {recording.directory}: {exc.strerror}") from None
        self._subscribed: set[str] = set()
        self._refused: set[str] = set()
        self._last_bytes, self._last_report = 0, time.monotonic()
        self._diag_pub = diagnostics_publisher(self)
        self._metrics = MetricTopics(self, "recorder")
        if recording.split == "episode" or self._events_topic in self._wanted:
            self._subscribe(RecordedTopic(self._events_topic, EVENT_TYPE), EVENTS_QOS)
        self._discover()
        self.create_timer(DISCOVERY_PERIOD, self._discover)
        self.create_timer(DIAGNOSTICS_PERIOD, self._publish_diagnostics)
        start_heartbeat(self)
        self.get_logger().info(
            f"recording {len(self._wanted)} topic(s) of {profile.robot_id} into {recording.directory}, "
            f"one bag per {recording.split}, compression {recording.compression}"
        )

    # -- subscriptions -------------------------------------------------------------------------

    def _discover(self) -> None:
        for name, types in self.get_topic_names_and_types():
            if name not in self._wanted or name in self._subscribed or name in self._refused:
                continue
            if len(types) != 1 or types[0] not in self._store.fielddefs:
                self._refused.add(name)
                self.get_logger().error(
                    f"{name} not recorded: its type {' or '.join(types)} is "
                    + ("ambiguous" if len(types) != 1 else "not in the bag type store")
                )
                continue
            publishers = [info.qos_profile for info in self.get_publishers_info_by_topic(name)]
            if not publishers:
                continue  # only subscribers so far: the publishers' QoS decides ours
            topic = RecordedTopic(name, types[0], tuple(offered_qos(p) for p in publishers))
            self._subscribe(topic, subscription_qos(publishers))

    def _subscribe(self, topic: RecordedTopic, qos: QoSProfile) -> None:
        try:
            msg_class = message_class(topic.msgtype)
        except BagError as exc:
            self._refused.add(topic.name)
            self.get_logger().error(f"{topic.name} not recorded: {exc}")
            return
        self.recorder.add_topic(topic)
        name = topic.name
        clock = self.get_clock()

        def receive(data: bytes) -> None:
            self.recorder.put(name, clock.now().nanoseconds, data)

        self.create_subscription(msg_class, name, receive, qos, raw=True)
        self._subscribed.add(name)
        self.get_logger().info(
            f"recording {name} ({topic.msgtype}, {qos.reliability.name.lower()}, "
            f"{qos.durability.name.lower()})"
        )

    # -- diagnostics ---------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        status = self.recorder.status()
        now = time.monotonic()
        rate = (status.bytes_written - self._last_bytes) / max(now - self._last_report, 1e-9) / 1e6
        self._last_bytes, self._last_report = status.bytes_written, now
        missing = sorted(self._wanted - self._subscribed - self._refused)
        level, message = (
            DiagnosticStatus.OK,
            (f"recording {status.current_bag}" if status.current_bag else "waiting for an episode"),
        )
        if status.last_error:
            level, message = DiagnosticStatus.ERROR, f"write failed: {status.last_error}"
        elif status.dropped:
            level, message = DiagnosticStatus.WARN, f"{status.dropped} message(s) dropped: queue full"
        elif self._refused:
            level, message = DiagnosticStatus.WARN, f"not recordable: {', '.join(sorted(self._refused))}"
        values = {
            **counters(status),
            "megabytes_per_s": f"{rate:.2f}",
            "topics_recorded": len(self._subscribed),
            "topics_missing": ", ".join(missing),
            "directory": str(self.recorder.directory),
        }
        publish_status(
            self,
            self._diag_pub,
            level=level,
            name="pld/recorder",
            hardware_id=self.profile.robot_id,
            message=message,
            values=values,
        )
        self._metrics.publish(
            {"megabytes_per_s": rate, "queue_depth": status.queue_depth, "dropped": status.dropped}
        )

    def destroy_node(self) -> None:
        # Runs after spinning stopped (SIGINT / SIGTERM): write what is queued, close the bag.
        queued = self.recorder.status().queue_depth
        if queued:
            self.get_logger().info(f"writing {queued} queued message(s) before exiting")
        if not self.recorder.stop():
            self.get_logger().error("the bag writer did not finish in time: the open bag stays unclosed")
        status = self.recorder.status()
        self.get_logger().info(
            f"recorded {status.written} of {status.received} message(s) received "
            f"({status.bytes_written / 1e6:.1f} MB) into {status.bags} bag(s); dropped {status.dropped} "
            f"(queue full), skipped {status.skipped} (outside an episode), write errors {status.write_errors}"
        )
        super().destroy_node()


def main() -> None:
    sys.exit(run_node(RecorderNode))


if __name__ == "__main__":
    main()
