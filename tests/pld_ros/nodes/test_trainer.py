"""The trainer node as a real process: the test streams episodes as a robot's replay buffer does
(``buffer/episodes``), checks the weights it announces the way the residual node checks them, and
kills and restarts it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from diagnostic_msgs.msg import DiagnosticArray

from pld_msgs.msg import PolicyWeights, StepRecord, TrainingMetrics
from pld_ros.core.episode import Outcome, RunMode
from pld_ros.core.training_log import read_training_log
from pld_ros.learning.episode_store import RecordedEpisode
from pld_ros.models.residual_actor import ResidualActor
from pld_ros.nodes.qos import LATCHED_QOS
from pld_ros.nodes.replay_buffer import EPISODES_TOPIC, episodes_qos
from pld_ros.nodes.step_records import records_of
from pld_ros.policies.residual import actor_config
from pld_ros.policies.weights import load_verified
from pld_ros.profile import load_profile
from tests.pld_ros.learning.test_episode_store import recorded_episode
from tests.processes import Watched, node_process
from tests.ros_probe import RosProbe

pytestmark = pytest.mark.ros

NAMESPACE = f"/trainer_test_{os.getpid()}"
PROFILE = """
name: trainer_test
robot_id: fr3_left
arms:
  arm:
    driver: franky
    safety: {{workspace_min: [0.2, -0.4, 0.0], workspace_max: [0.8, 0.4, 0.6]}}
cameras:
  wrist: {{driver: opencv, source: "0", fps: 20, policy_view: {{width: 16, height: 16}}}}
  side: {{driver: opencv, source: "1", fps: 20, policy_view: {{width: 16, height: 16}}}}
policies:
  base: {{backend: openpi, uri: "ws://127.0.0.1:1", prompt: test, views: [wrist, side]}}
  residual: {{hidden_dim: 16, num_layers: 1}}
supervisor: {{max_episode_steps: 20, warmup_episodes: 1}}
buffer: {{capacity: 1000}}
trainer:
  directory: "{directory}"
  device: cpu
  batch_size: 8
  critic_hidden_dim: 16
  onthefly_samples: 2
  cql_samples: 2
  calql_pretrain_steps: 3
  publish_every_updates: 4
  updates_per_step: 1.0
"""


class Robot:
    """The robot's replay buffer (episodes out) and residual node (weights in)."""

    def __init__(self, probe: RosProbe) -> None:
        self.probe = probe
        node = probe.node
        self.episodes = node.create_publisher(StepRecord, EPISODES_TOPIC, episodes_qos(21))
        self.weights: list[PolicyWeights] = []
        self.metrics: list[TrainingMetrics] = []
        self.diagnostics: dict[str, str] = {}
        node.create_subscription(PolicyWeights, "policy/residual/weights", self.weights.append, LATCHED_QOS)
        node.create_subscription(TrainingMetrics, "trainer/metrics", self.metrics.append, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)

    def _on_diagnostics(self, array: DiagnosticArray) -> None:
        for status in array.status:
            if status.name == "pld/trainer" and status.hardware_id == "vm-test":
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def connect(self, trainer: Watched) -> None:
        self.probe.spin_until(
            lambda: self.episodes.get_subscription_count() > 0,
            20.0,
            f"the trainer's subscription\n{trainer.output}",
        )
        # A killed trainer's subscription stays counted until its lease runs out, and a new one
        # may not have matched yet: the stream is transient local (one episode deep), so the
        # newest episode still reaches a trainer that matches late.
        self.probe.spin_for(1.0)

    def send(self, episode: RecordedEpisode) -> None:
        for record in records_of(episode, self.probe.node.get_clock().now().to_msg()):
            self.episodes.publish(record)

    def wait_metrics(
        self, what: str, done: Callable[[TrainingMetrics], bool], trainer: Watched
    ) -> TrainingMetrics:
        self.probe.spin_until(
            lambda: bool(self.metrics) and done(self.metrics[-1]),
            60.0,
            f"{what}; last metrics {self.metrics[-1:]}\n{trainer.output}",
        )
        return self.metrics[-1]


@pytest.fixture
def probe() -> Iterator[RosProbe]:
    probe = RosProbe("trainer_probe", NAMESPACE)
    yield probe
    probe.close()


def start_trainer(profile: Path) -> Watched:
    return node_process("pld_ros.nodes.trainer", NAMESPACE, profile, trainer_id="vm-test")


def episode(episode_id: int, mode: RunMode, outcome: Outcome, ticks: int) -> RecordedEpisode:
    return recorded_episode(episode_id, ticks=ticks, mode=mode, outcome=outcome, probe_steps=3, size=16)


def test_the_trainer_learns_from_streamed_episodes_publishes_verified_weights_and_resumes_after_a_kill(
    probe: RosProbe, tmp_path: Path
) -> None:
    profile_path = tmp_path / "trainer_test.yaml"
    profile_path.write_text(PROFILE.format(directory=tmp_path / "trainer"))
    reference = ResidualActor(actor_config(load_profile(str(profile_path)))).state_dict()
    robot = Robot(probe)
    trainer = start_trainer(profile_path)
    try:
        trainer.wait_for("listening on", 60.0)
        robot.connect(trainer)
        robot.send(episode(1, RunMode.BASE_ONLY, Outcome.SUCCESS, 8))  # the warm-up: offline
        robot.send(episode(2, RunMode.PROBE_TAKEOVER, Outcome.FAILURE, 12))  # online
        # 8 online learning steps (from the takeover at tick 3 to the end) buy 8 updates: two
        # versions of weights, one every 4 updates, after the 3 Cal-QL steps.
        metrics = robot.wait_metrics("8 updates", lambda m: m.updates == 8 and m.version == 2, trainer)
        assert metrics.episodes == 2 and metrics.offline_transitions == 7 and metrics.online_transitions > 0
        # What full buffers will take is said once the first episode fixes the shapes.
        trainer.wait_for(r"replay buffers: [\d.]+ kB per transition, [\d.]+ GB once both hold", 5.0)
        probe.spin_until(lambda: any(w.version == 2 for w in robot.weights), 20.0, "weights version 2")
        announced = next(w for w in robot.weights if w.version == 2)
        # What the residual node does with an announcement: checksum, size, tensor names and shapes.
        verified = load_verified(
            Path(urlparse(announced.uri).path), announced.sha256, announced.size, reference
        )
        assert verified.metadata["version"] == "2" and verified.metadata["updates"] == "8"
        assert announced.policy == "residual" and announced.format == "safetensors"

        trainer.kill()  # SIGKILL: no chance to save anything more
        robot.weights.clear()
        robot.metrics.clear()
        trainer = start_trainer(profile_path)
        restored = trainer.wait_for(r"(\d+) episodes restored", 60.0)
        assert restored.group(1) == "2"
        # The newest weights are announced again for robots that start later; nothing is owed.
        probe.spin_until(lambda: any(w.version == 2 for w in robot.weights), 20.0, "weights again")
        metrics = robot.wait_metrics("the restored counters", lambda m: m.updates == 8, trainer)
        assert metrics.episodes == 2

        robot.connect(trainer)
        robot.send(episode(3, RunMode.PROBE_TAKEOVER, Outcome.SUCCESS, 12))
        metrics = robot.wait_metrics(
            "learning goes on", lambda m: m.updates == 16 and m.version == 4 and m.episodes == 3, trainer
        )
        probe.spin_until(lambda: "records" in robot.diagnostics, 10.0, "the trainer's diagnostics")
        records = int(robot.diagnostics["records"])
        robot.send(episode(2, RunMode.PROBE_TAKEOVER, Outcome.FAILURE, 12))  # streamed twice
        probe.spin_until(
            lambda: int(robot.diagnostics["records"]) >= records + 12, 30.0, "the repeated episode's records"
        )
        probe.spin_for(2.0)  # time to learn from it, were it new
        assert robot.metrics[-1].episodes == 3 and robot.metrics[-1].updates == 16  # not learned twice
        # One metrics log across the kill: a line per second from both processes, in order.
        log = read_training_log(tmp_path / "trainer")
        updates = [record.updates for record in log]
        assert updates == sorted(updates) and 8 in updates and updates[-1] == 16
        assert log[-1].version == 4 and log[-1].episodes == 3 and log[-1].trainer_id == "vm-test"
        assert log[-1].phase == "online" and log[-1].critic_loss > 0.0
    finally:
        trainer.kill()
