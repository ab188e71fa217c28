"""Replay-buffer node: the robot's side of the replay buffer. It records every episode the graph
runs, stores it on disk crash-safely, and streams it to the trainer.

- ``buffer/steps`` (``StepRecord``, from the residual policy node): one record per control tick
  of an episode. ``episode/events`` (``EpisodeEvent``, from the supervisor): the ENDED event with
  the outcome. :class:`~pld_ros.learning.episode_assembler.EpisodeAssembler` turns them into whole
  episodes (rules there: a hole in the steps, an episode that never ended, invalid data are
  reported and not stored; ABORTED episodes are stored).
- Each assembled episode goes to an :class:`~pld_ros.learning.episode_store.EpisodeStore` in the
  profile's ``buffer.directory``, one ``<robot_id>-<episode_id>.npz`` per episode, either whole or
  absent (atomic write, fsync). The writes run in a worker thread, never in a callback: a
  compressed episode takes 0.3 to 1.3 s to write, longer than many control ticks.
- Once an episode with learning data is on disk, its ticks go out on ``buffer/episodes`` (also
  ``StepRecord``), in step order, with reward, terminated / truncated, outcome and run_id set
  (see the message): the trainer's stream. Episodes without learning data (aborted, or no
  takeover) are only stored, and so are the episodes of stages the residual does not learn
  (``supervisor.train_stages``: per-sub-task PLD; every stage's episodes are kept for distilling).
- ``/diagnostics`` (``pld/replay_buffer``): episodes written and their offline / online split
  (:func:`~pld_ros.learning.episode_store.buffer_for`), episodes dropped and why, write time,
  queue length; a heartbeat; one log line per written episode.

run_id: the supervisor's run directory name is not on the wire, so the node takes the newest run
directory of the profile under ``supervisor.run_directory`` (the supervisor creates it when the
run starts, before any episode), "" when there is none (a supervisor on another machine).

Shutdown (SIGINT / SIGTERM): episodes already assembled or ended are written before the process
exits; the episode still running is dropped (it never ended). SIGKILL loses at most the episodes
waiting in the queue; every file already on disk stays whole.
"""

from __future__ import annotations

import queue
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from pld_msgs.msg import EpisodeEvent, StepRecord
from pld_ros.core.episode import Outcome, RunMode
from pld_ros.core.episode_log import run_directory_name
from pld_ros.learning.episode_assembler import GRACE, Assembled, Dropped, Ending, EpisodeAssembler
from pld_ros.learning.episode_store import EpisodeStore, RecordedEpisode, buffer_for
from pld_ros.nodes.diagnostics import MetricTopics, diagnostics_publisher, publish_status
from pld_ros.nodes.heartbeat import start_heartbeat
from pld_ros.nodes.qos import EVENTS_QOS
from pld_ros.nodes.runner import NodeConfigError, load_node_profile, run_node
from pld_ros.nodes.step_records import records_of, tick_of
from pld_ros.profile import Profile

STEPS_TOPIC = "buffer/steps"
STEPS_QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
"""Reliable: a lost record makes its episode incomplete. Depth 50 (2.5 s at 20 Hz, our choice)
absorbs a subscriber that stalls for a moment without holding many 100 kB records."""
EPISODES_TOPIC = "buffer/episodes"
POLL_PERIOD = 0.2
"""s between two checks for an ended episode whose grace period has passed."""
DIAGNOSTICS_PERIOD = 1.0
SHUTDOWN_WRITE_TIMEOUT = 60.0
"""s the node waits at shutdown for the queued episodes to be written (a few seconds each at
most; beyond that the disk is failing and the launcher's SIGKILL comes first anyway)."""


def episodes_qos(max_ticks: int) -> QoSProfile:
    """Deep enough for one whole episode: the trainer must get every tick of it. Transient local:
    a trainer that (re)starts, or whose subscription matches a moment late, still gets the newest
    episode (one it already has is recognized by its file and not learned twice)."""
    return QoSProfile(
        depth=max_ticks, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
    )


def newest_run_id(profile: Profile) -> str:
    """The name of the profile's newest run directory, "" if none (see the module docstring)."""
    root = profile.supervisor.run_directory
    runs = [p.name for p in root.glob(run_directory_name(profile.name, "*")) if p.is_dir()]
    return max(runs, default="")


class ReplayBufferNode(Node):
    def __init__(self) -> None:
        super().__init__("replay_buffer")
        profile = load_node_profile(self)
        if profile.policies is None:
            raise NodeConfigError(f"profile {profile.name!r} has no 'policies' section")
        self.profile = profile
        # Seconds to wait after an ENDED event for the episode's last records (see GRACE).
        grace = float(self.declare_parameter("end_grace", GRACE).value)
        if not grace >= 0.0:
            raise NodeConfigError(f"parameter 'end_grace' must not be negative, got {grace}")
        self.view_names = tuple(profile.policies.base.views)
        self.assembler = EpisodeAssembler(
            profile.robot_id, self.view_names, profile.supervisor.max_episode_steps, grace
        )
        try:
            self.store = EpisodeStore(profile.buffer.directory)
        except (OSError, RuntimeError) as exc:
            raise NodeConfigError(f"buffer.directory: {exc}") from None
        self.counters = {
            "records": 0,
            "malformed_records": 0,
            "episodes_written": 0,
            "offline": 0,
            "online": 0,
            "no_learning_data": 0,
            "write_failures": 0,
            "streamed_episodes": 0,
            "other_stage": 0,
        }
        self._train_stages = frozenset(profile.supervisor.train_stages)
        self._other_stage: set[int] = set()
        """Episodes of stages not trained: stored, not streamed (written by the callback thread
        before the writer thread can see the episode)."""
        self._last_drop = ""
        self._last_write_s = float("nan")
        self._last_failure = ""
        self._queue: queue.Queue[RecordedEpisode | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_episodes, name="episode_writer")

        self._stream_pub = self.create_publisher(
            StepRecord, EPISODES_TOPIC, episodes_qos(self.assembler.max_ticks)
        )
        self._diag_pub = diagnostics_publisher(self)
        self._metrics = MetricTopics(self, "buffer")
        steps = self.create_subscription(StepRecord, STEPS_TOPIC, self._on_record, STEPS_QOS)
        self.create_subscription(EpisodeEvent, "episode/events", self._on_event, EVENTS_QOS)
        self.create_timer(POLL_PERIOD, lambda: self._handle(self.assembler.poll(self._now())))
        self.create_timer(DIAGNOSTICS_PERIOD, self._publish_diagnostics)
        # The steps are volatile: what the residual policy publishes before the two have matched
        # is lost. The supervisor starts no episode before this node beats, so it beats only once
        # a steps publisher is matched (a first episode once went missing without it).
        start_heartbeat(self, ready=lambda: steps.get_publisher_count() > 0)
        self._writer.start()
        removed = len(self.store.removed_temporaries)
        self.get_logger().info(
            f"replay buffer of {profile.robot_id}: views {', '.join(self.view_names)}, "
            f"episodes in {self.store.directory}"
            + (f" ({removed} partial file(s) of a killed writer removed)" if removed else "")
        )

    def _now(self) -> float:
        return time.monotonic()

    # -- inputs --------------------------------------------------------------------------------

    def _on_record(self, record: StepRecord) -> None:
        self.counters["records"] += 1
        try:
            tick = tick_of(record, self.profile.robot_id, self.view_names)
        except ValueError as exc:
            self.counters["malformed_records"] += 1
            self.get_logger().error(
                f"step record {record.episode_id}/{record.step} ignored: {exc}", throttle_duration_sec=5.0
            )
            return
        self._handle(self.assembler.add(tick, self._now()))

    def _on_event(self, event: EpisodeEvent) -> None:
        if event.event != EpisodeEvent.ENDED or event.robot_id != self.profile.robot_id:
            return
        if self._train_stages and event.stage not in self._train_stages:
            self._other_stage.add(int(event.episode_id))
        ending = Ending(
            episode_id=int(event.episode_id),
            outcome=Outcome(event.outcome.value),
            mode=RunMode(event.mode.value),
            steps=int(event.step),
            run_id=newest_run_id(self.profile),
        )
        self._handle(self.assembler.end(ending, self._now()))

    def _handle(self, results: list[Assembled]) -> None:
        for result in results:
            if isinstance(result, Dropped):
                self._last_drop = f"episode {result.episode_id} {result.kind}: {result.reason}"
                self.get_logger().warning(f"not stored: {self._last_drop}")
            else:
                self._queue.put(result)

    # -- the writer ----------------------------------------------------------------------------

    def _write_episodes(self) -> None:
        while (episode := self._queue.get()) is not None:
            meta = episode.meta
            started = time.perf_counter()
            try:
                path = self.store.write(episode)
            # A failed write (disk full, an id stored twice) loses this episode, not the node.
            except (OSError, ValueError) as exc:
                self.counters["write_failures"] += 1
                self._last_failure = f"episode {meta.episode_id}: {exc}"
                self.get_logger().error(f"episode not written: {self._last_failure}")
                continue
            self._last_write_s = time.perf_counter() - started
            buffer = buffer_for(episode)
            if meta.episode_id in self._other_stage:
                self._other_stage.discard(meta.episode_id)
                buffer = None
                self.counters["other_stage"] += 1
            self.counters["episodes_written"] += 1
            self.counters[buffer or "no_learning_data"] += 1
            self.get_logger().info(
                f"episode {meta.episode_id} written: {meta.outcome.name.lower()}, "
                f"{meta.mode.name.lower()}, {len(episode)} ticks, buffer {buffer or 'none'}, "
                f"{path.stat().st_size / 1e6:.1f} MB in {self._last_write_s:.2f} s -> {path.name}"
            )
            if buffer is not None and self.context.ok():
                self._stream(episode)

    def _stream(self, episode: RecordedEpisode) -> None:
        for record in records_of(episode, self.get_clock().now().to_msg()):
            self._stream_pub.publish(record)
        self.counters["streamed_episodes"] += 1

    # -- diagnostics ---------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        counts = self.assembler.counts
        dropped = counts.incomplete + counts.unfinished + counts.invalid
        level, message = DiagnosticStatus.OK, "recording"
        if self._last_failure:
            level, message = DiagnosticStatus.ERROR, f"last write failed: {self._last_failure}"
        elif dropped:
            level, message = DiagnosticStatus.WARN, f"last dropped: {self._last_drop}"
        values = {
            **self.counters,
            "incomplete": counts.incomplete,
            "unfinished": counts.unfinished,
            "invalid": counts.invalid,
            "late_ticks": counts.late_ticks,
            "after_end_ticks": counts.after_end_ticks,
            "queue_length": self._queue.qsize(),
            "last_write_s": f"{self._last_write_s:.3f}",
            "open_episode": self.assembler.open_episode or "",
            "last_dropped": self._last_drop,
            "directory": str(self.store.directory),
        }
        publish_status(
            self,
            self._diag_pub,
            level=level,
            name="pld/replay_buffer",
            hardware_id=self.profile.robot_id,
            message=message,
            values=values,
        )
        self._metrics.publish(
            {
                "episodes_written": self.counters["episodes_written"],
                "offline": self.counters["offline"],
                "online": self.counters["online"],
                "dropped": dropped,
                "queue_length": self._queue.qsize(),
                "last_write_s": self._last_write_s,
            }
        )

    def destroy_node(self) -> None:
        # Runs after spinning stopped (SIGINT / SIGTERM): the ended episodes are written first.
        self._handle(self.assembler.flush())
        self._queue.put(None)
        waiting = self._queue.qsize() - 1
        if waiting:
            self.get_logger().info(f"writing {waiting} queued episode(s) before exiting")
        self._writer.join(timeout=SHUTDOWN_WRITE_TIMEOUT)
        self.store.close()
        super().destroy_node()


def main() -> None:
    sys.exit(run_node(ReplayBufferNode))


if __name__ == "__main__":
    main()
