"""Trainer node: Stage 1 of PLD (:class:`~pld_ros.learning.learner.Learner`) fed by the robots'
replay buffers over DDS, publishing versioned weights and training metrics.

It runs on the robot's computer or on another machine (a GPU box) on the same ROS domain.

- In: ``<robot>/buffer/episodes`` (``StepRecord``) for each namespace in the ``robots``
  parameter (``[""]``: the trainer's own namespace): every tick of each stored episode that has
  learning data, streamed by the robot's replay-buffer node. Episodes are reassembled
  (:class:`~pld_ros.learning.episode_assembler.EpisodeAssembler`, one per robot_id), kept in the
  trainer's own :class:`~pld_ros.learning.episode_store.EpisodeStore` and added to the offline or
  online buffer (:func:`~pld_ros.learning.episode_store.buffer_for`). Several robots may feed one
  trainer: their episodes are keyed by robot_id and all go to the same buffers, so they must run
  the same task and base policy.
- Learning runs in a worker thread: the warm-up, Cal-QL pretraining and online updates of the
  Learner, paced by the data (``trainer.updates_per_step``).
- Out: every ``publish_every_updates`` updates the actor is exported to
  ``<directory>/weights/residual-<version>.safetensors`` and announced on
  ``<robot>/policy/residual/weights`` (``PolicyWeights``, transient local: a robot that starts
  later gets the newest) with its sha256 and size, as a ``file://`` URI or under the
  ``weights_url`` parameter (an HTTP server of that folder for robots on other machines). The
  learner's checkpoint is saved at the same moment. ``trainer/metrics`` (``TrainingMetrics``)
  and ``/diagnostics`` once a second; the same numbers go to ``<directory>/metrics.jsonl``, one
  fsync'd JSON line per second (:mod:`pld_ros.core.training_log`, plotted by ``pld report``).
- Restart: the checkpoint is loaded, the stored episodes are added back (the update budget counts
  them, so no update is repeated or owed), version numbers continue, the newest weights are
  announced again, and the metrics log is appended to.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import socket
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node

from pld_msgs.msg import PolicyWeights, StepRecord, TrainingMetrics
from pld_ros.core.atomic_file import atomic_write
from pld_ros.core.json_lines import JsonLines
from pld_ros.core.training_log import METRICS_FILE, TrainingRecord
from pld_ros.learning.episode_assembler import Assembled, Dropped, EpisodeAssembler
from pld_ros.learning.episode_store import EpisodeStore, RecordedEpisode, buffer_for, learning_steps
from pld_ros.learning.learner import Learner
from pld_ros.learning.replay_buffer import ReplayBuffer
from pld_ros.nodes.diagnostics import diagnostics_publisher, publish_status
from pld_ros.nodes.heartbeat import start_heartbeat
from pld_ros.nodes.qos import LATCHED_QOS
from pld_ros.nodes.replay_buffer import EPISODES_TOPIC, episodes_qos
from pld_ros.nodes.residual_policy import POLICY_NAME
from pld_ros.nodes.runner import NodeConfigError, fail_node, load_node_profile, run_node
from pld_ros.nodes.step_records import ending_of, tick_of
from pld_ros.policies.residual import actor_config, xi_at

TRAIN_CHUNK = 50
"""Updates between two looks at the publishing schedule (an incoming episode ends a chunk early)."""
KEEP_WEIGHTS = 5
"""Published weight files kept on disk; older ones are deleted (a robot fetches the newest)."""
METRICS_PERIOD = 1.0
_WEIGHTS_FILE = re.compile(r"residual-(\d+)\.safetensors")


def weights_file(directory: Path, version: int) -> Path:
    return directory / f"residual-{version:06d}.safetensors"


def published_versions(directory: Path) -> list[int]:
    """Versions of the weight files in ``directory``, oldest first."""
    found = (_WEIGHTS_FILE.fullmatch(p.name) for p in directory.glob("residual-*.safetensors"))
    return sorted(int(match.group(1)) for match in found if match)


def topic(namespace: str, name: str) -> str:
    return f"{namespace.rstrip('/')}/{name}" if namespace else name


class TrainerNode(Node):
    def __init__(self) -> None:
        super().__init__("trainer")
        profile = load_node_profile(self)
        if profile.policies is None:
            raise NodeConfigError(f"profile {profile.name!r} has no 'policies' section")
        self.profile = profile
        self.trainer_id = str(self.declare_parameter("trainer_id", socket.gethostname()).value)
        namespaces: list[str] = self.declare_parameter("robots", [""]).value
        robots = [str(namespace) for namespace in namespaces]
        self.weights_url = str(self.declare_parameter("weights_url", "").value).rstrip("/")
        seed = int(self.declare_parameter("seed", 0).value)
        directory = profile.trainer.directory
        try:
            self.store = EpisodeStore(directory / "episodes")
            (directory / "weights").mkdir(parents=True, exist_ok=True)
            self._metrics_log = JsonLines(directory / METRICS_FILE)
        except (OSError, RuntimeError) as exc:
            raise NodeConfigError(f"trainer.directory: {exc}") from None
        self.weights_dir = directory / "weights"
        self.checkpoint = directory / "checkpoint"
        self.view_names = tuple(profile.policies.base.views)
        self.learner = Learner(
            profile.trainer,
            actor_config(profile),
            capacity=profile.buffer.capacity,
            warmup_episodes=profile.supervisor.warmup_episodes,
            seed=seed,
        )
        self.counters = {
            "records": 0,
            "episodes_received": 0,
            "duplicates": 0,
            "dropped": 0,
            "malformed_records": 0,
            "metrics_log_errors": 0,
        }
        self._metrics_log_error = ""
        self._memory_reported = False
        self._restore()
        versions = published_versions(self.weights_dir)
        self.version = versions[-1] if versions else 0
        self._next_publish = self.learner.sac.updates + profile.trainer.publish_every_updates
        self._metrics: dict[str, float] = {}
        self._rate = (time.monotonic(), self.learner.sac.updates, 0.0)
        self._assemblers: dict[str, EpisodeAssembler] = {}
        self._episodes: queue.Queue[RecordedEpisode] = queue.Queue()
        self._stop = threading.Event()

        max_ticks = profile.supervisor.max_episode_steps + 1
        for robot in robots:
            self.create_subscription(
                StepRecord, topic(robot, EPISODES_TOPIC), self._on_record, episodes_qos(max_ticks)
            )
        self._weights_pubs = [
            self.create_publisher(PolicyWeights, topic(robot, "policy/residual/weights"), LATCHED_QOS)
            for robot in robots
        ]
        self._metrics_pub = self.create_publisher(TrainingMetrics, "trainer/metrics", 10)
        self._diag_pub = diagnostics_publisher(self)
        self.create_timer(METRICS_PERIOD, self._publish_metrics)
        start_heartbeat(self)
        if self.version:
            self._announce(self.version, weights_file(self.weights_dir, self.version).read_bytes())
        self._worker = threading.Thread(target=self._train, name="learner")
        self._worker.start()
        progress = self.learner.progress()
        self.get_logger().info(
            f"trainer {self.trainer_id}: {progress.episodes} episodes restored "
            f"({progress.offline_transitions} offline, {progress.online_transitions} online transitions), "
            f"{progress.updates} updates, weights version {self.version}; listening on "
            + ", ".join(topic(r, EPISODES_TOPIC) for r in robots)
        )

    # -- data ------------------------------------------------------------------------------------

    def _restore(self) -> None:
        try:
            self.learner.load(self.checkpoint)
        except FileNotFoundError:
            pass  # a first start: nothing learned yet
        except (OSError, ValueError, KeyError) as exc:
            raise NodeConfigError(f"checkpoint {self.checkpoint}: {exc}") from None
        for episode in self.store.episodes():
            self._learn_from(episode)
        for path, problem in self.store.problems.items():
            self.get_logger().error(f"stored episode {path.name} skipped: {problem}")

    def _learn_from(self, episode: RecordedEpisode) -> None:
        buffer = buffer_for(episode)
        steps = learning_steps(episode)
        if buffer is not None and steps is not None:
            self.learner.add(steps, buffer)
            if not self._memory_reported:
                self._report_memory(self.learner.buffer(buffer))

    def _report_memory(self, filled: ReplayBuffer) -> None:
        """Say once what the buffers will take when full: the default capacity suits state
        observations, and with images it can exceed the machine (two 128x128 views make a
        transition about 100 kB: a million of them, 100 GB per buffer)."""
        size = filled.bytes_per_transition
        if size is None:
            return
        self._memory_reported = True
        capacity = filled.capacity
        full = 2 * size * capacity  # offline and online, the same capacity each
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        message = (
            f"replay buffers: {size / 1e3:.1f} kB per transition, {full / 1e9:.1f} GB once both "
            f"hold buffer.capacity ({capacity} transitions)"
        )
        if full > physical:
            self.get_logger().warning(
                f"{message}: more than this machine's {physical / 1e9:.1f} GB, lower buffer.capacity"
            )
        else:
            self.get_logger().info(message)

    def _on_record(self, record: StepRecord) -> None:
        self.counters["records"] += 1
        assembler = self._assemblers.get(record.robot_id)
        if assembler is None:
            assembler = EpisodeAssembler(
                record.robot_id, self.view_names, self.profile.supervisor.max_episode_steps
            )
            self._assemblers[record.robot_id] = assembler
        try:
            tick = tick_of(record, record.robot_id, self.view_names)
        except ValueError as exc:
            self.counters["malformed_records"] += 1
            self.get_logger().error(f"step record ignored: {exc}", throttle_duration_sec=5.0)
            return
        now = time.monotonic()
        results = assembler.add(tick, now)
        ending = ending_of(record)
        if ending is not None:
            results += assembler.end(ending, now)
        self._handle(results)

    def _handle(self, results: list[Assembled]) -> None:
        for result in results:
            if isinstance(result, Dropped):
                self.counters["dropped"] += 1
                self.get_logger().warning(f"episode {result.episode_id} not learned: {result.reason}")
            else:
                self._episodes.put(result)

    # -- learning (worker thread) ---------------------------------------------------------------

    def _train(self) -> None:
        try:
            while not self._stop.is_set():
                self._take_episodes()
                if not self.learner.pretrained or self.learner.update_budget:
                    # Stop at the next publication, so every version lands on its update count.
                    chunk = min(TRAIN_CHUNK, self._next_publish - self.learner.sac.updates)
                    # An episode that arrives cuts the chunk short: on a CPU an image update
                    # takes seconds, and the queue would otherwise hold episodes for minutes.
                    metrics = self.learner.train(max_updates=chunk, stop=self._yield_to_episodes)
                    if metrics:
                        self._metrics = metrics
                    if self.learner.sac.updates >= self._next_publish:
                        self._publish_weights()
                else:
                    time.sleep(0.05)
        except Exception as exc:
            # A bug, not a fault: stop the node with the reason, the launcher reports it.
            fail_node(self, f"learner crashed: {type(exc).__name__}: {exc}")

    def _yield_to_episodes(self) -> bool:
        return self._stop.is_set() or not self._episodes.empty()

    def _take_episodes(self) -> None:
        while True:
            try:
                episode = self._episodes.get_nowait()
            except queue.Empty:
                return
            try:
                self.store.write(episode)
            except FileExistsError:
                # Delivered twice (a replay buffer restarted and streamed it again): learned once.
                self.counters["duplicates"] += 1
                continue
            self.counters["episodes_received"] += 1
            self._learn_from(episode)
            meta = episode.meta
            self.get_logger().info(
                f"episode {meta.robot_id}/{meta.episode_id}: {meta.outcome.name.lower()}, "
                f"{len(episode)} ticks, buffer {buffer_for(episode)}"
            )

    def _publish_weights(self) -> None:
        version = self.version + 1
        path = weights_file(self.weights_dir, version)
        data = self.learner.sac.actor_weights(version)
        atomic_write(path, lambda out: out.write(data))
        self.learner.save(self.checkpoint)
        self.version = version
        self._next_publish = self.learner.sac.updates + self.profile.trainer.publish_every_updates
        for old in published_versions(self.weights_dir)[:-KEEP_WEIGHTS]:
            weights_file(self.weights_dir, old).unlink(missing_ok=True)
        self._announce(version, data)
        self.get_logger().info(f"weights version {version} at {self.learner.sac.updates} updates")

    def _announce(self, version: int, data: bytes) -> None:
        """Announce the weights file of ``version``, whose contents are ``data``."""
        path = weights_file(self.weights_dir, version)
        message = PolicyWeights(
            policy=POLICY_NAME,
            version=version,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            uri=f"{self.weights_url}/{path.name}" if self.weights_url else path.resolve().as_uri(),
            format="safetensors",
            trainer_id=self.trainer_id,
        )
        message.header.stamp = self.get_clock().now().to_msg()
        for publisher in self._weights_pubs:
            publisher.publish(message)

    # -- monitoring ------------------------------------------------------------------------------

    def _publish_metrics(self) -> None:
        progress = self.learner.progress()
        now = time.monotonic()
        last_time, last_updates, rate = self._rate
        if now - last_time >= 5.0:
            rate = (progress.updates - last_updates) / (now - last_time)
            self._rate = (now, progress.updates, rate)
        metrics = self._metrics
        assert self.profile.policies is not None
        message = TrainingMetrics(
            trainer_id=self.trainer_id,
            policy=POLICY_NAME,
            version=self.version,
            updates=progress.updates,
            updates_per_second=rate,
            critic_loss=metrics.get("critic_loss", float("nan")),
            actor_loss=metrics.get("actor_loss", float("nan")),
            q_mean=metrics.get("q_mean", float("nan")),
            temperature=self.learner.sac.temperature,
            xi=xi_at(self.profile.policies.residual.xi, progress.updates),
            offline_transitions=progress.offline_transitions,
            online_transitions=progress.online_transitions,
            episodes=progress.episodes,
        )
        message.header.stamp = self.get_clock().now().to_msg()
        self._metrics_pub.publish(message)
        if not progress.warmed_up:
            phase, text = "warm-up", f"warm-up ({progress.episodes}/{self.learner.warmup_episodes} episodes)"
        elif not self.learner.pretrained:
            phase, text = "pretraining", f"Cal-QL pretraining ({progress.pretrain_updates} steps)"
        else:
            phase = text = "online"
        self._log_metrics(message, phase)
        level = DiagnosticStatus.OK
        if self._metrics_log_error:
            level, text = DiagnosticStatus.WARN, f"{text}; metrics log: {self._metrics_log_error}"
        publish_status(
            self,
            self._diag_pub,
            level=level,
            name="pld/trainer",
            hardware_id=self.trainer_id,
            message=text,
            values={
                **self.counters,
                # Ticks of an episode this process assembled already: a stream repeated.
                "repeated_ticks": sum(a.counts.late_ticks for a in self._assemblers.values()),
                **{key: f"{value:.4g}" for key, value in metrics.items()},
                "updates": progress.updates,
                "pretrain_updates": progress.pretrain_updates,
                "update_budget": self.learner.update_budget,
                "version": self.version,
                "metrics_log": str(self._metrics_log.path),
            },
        )

    def _log_metrics(self, message: TrainingMetrics, phase: str) -> None:
        record = TrainingRecord(
            time=time.time(),
            updates=message.updates,
            version=message.version,
            updates_per_second=message.updates_per_second,
            critic_loss=message.critic_loss,
            actor_loss=message.actor_loss,
            q_mean=message.q_mean,
            temperature=message.temperature,
            xi=message.xi,
            offline_transitions=message.offline_transitions,
            online_transitions=message.online_transitions,
            episodes=message.episodes,
            phase=phase,
            trainer_id=self.trainer_id,
        )
        try:
            self._metrics_log.append(asdict(record))
        except OSError as exc:
            # A full disk loses curve points, never training: the learner goes on.
            self.counters["metrics_log_errors"] += 1
            self._metrics_log_error = str(exc)
            self.get_logger().error(f"metrics log not written: {exc}", throttle_duration_sec=60.0)
        else:
            self._metrics_log_error = ""

    def destroy_node(self) -> None:
        self._stop.set()
        self._worker.join(timeout=30.0)
        self.store.close()
        super().destroy_node()


def main() -> None:
    sys.exit(run_node(TrainerNode))


if __name__ == "__main__":
    main()
