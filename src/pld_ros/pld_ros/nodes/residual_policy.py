"""Residual policy node: one ``<arm>/command`` per base action while an episode runs.

Each ``policy/base/action`` is a control tick. Between an episode's STARTED and its end (ENDED, or
a phase change to RESETTING / IDLE / DONE) the node answers every base action with one
``DeltaPoseCommand``: the base action while probing, ``base + xi * residual`` after the takeover,
or the human's step while the human acts (:class:`~pld_ros.policies.residual.ResidualController`).
``step`` counts the base actions since STARTED, from 0. Outside an episode it publishes nothing:
the supervisor commands resets.

Weights: the profile's ``policies.residual.weights`` at start (else a zero-initialised actor,
i.e. the base policy alone), then every newer version announced on ``policy/residual/weights``
(``PolicyWeights.policy == "residual"``). A loader thread fetches, verifies (size, sha256,
safetensors only, tensor names and shapes) and builds the new actor; the control tick takes it at
its next start, so a tick runs on one version from start to end. A bad file is rejected and
reported on /diagnostics (``pld/policy/residual``); the node keeps running on the last good
weights. The ``updates`` of the weights' metadata set xi (see the profile's ``XiSchedule``).

Each tick it acts on also goes to the replay buffer as one ``StepRecord`` on ``buffer/steps``
(published after the command, so the arm never waits for it): the observation it used (policy
views, proprioception), the base action, the actor's normalized residual (zeros unless COMBINED),
xi, the executed action, the source and the episode's phase (PROBING until step k, TAKEOVER from
there; TAKEOVER throughout RESIDUAL_ONLY). A tick without an observation (a stale camera) sends
no record (counted as ``unrecorded_ticks``); the replay buffer then reports the episode
incomplete. Its cost, measured with two 128x128 views on the 2-core development machine under load
and the replay buffer subscribed from another process: 0.67 ms median, 2.5 ms p90, 3.1 ms p99 per
tick (0.37 ms median with no subscriber).

A node that starts while an episode runs sees the episode's STARTED (transient local events) and
counts steps from its first base action, so its ``step`` lags the supervisor's.
"""

from __future__ import annotations

import queue
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node

from pld_msgs.msg import (
    ActionSource as ActionSourceMsg,
)
from pld_msgs.msg import (
    BaseAction,
    DeltaPoseCommand,
    EpisodeEvent,
    EpisodePhase,
    PolicyWeights,
    RobotState,
    StepRecord,
)
from pld_ros.core.episode import Phase, RunMode, Source
from pld_ros.core.frame_sync import NoSet
from pld_ros.core.messages import action_of
from pld_ros.core.observation import ACTION_DIM, Observation
from pld_ros.core.rate import TickTiming
from pld_ros.models.residual_actor import ResidualActor
from pld_ros.nodes.camera_publisher import image_message
from pld_ros.nodes.diagnostics import MetricTopics, diagnostics_publisher, publish_status
from pld_ros.nodes.heartbeat import start_heartbeat
from pld_ros.nodes.observations import ViewCache, seconds
from pld_ros.nodes.qos import EVENTS_QOS, LATCHED_QOS
from pld_ros.nodes.replay_buffer import STEPS_QOS, STEPS_TOPIC
from pld_ros.nodes.runner import NodeConfigError, control_arm, load_node_profile, run_node
from pld_ros.policies.residual import (
    ActorWeights,
    HumanStep,
    OnnxRunner,
    ResidualController,
    TickResult,
    actor_config,
    xi_at,
)
from pld_ros.policies.weights import (
    VerifiedWeights,
    Versioned,
    WeightsError,
    WeightsSlot,
    fetch,
    load_local,
    load_verified,
)

POLICY_NAME = "residual"
"""``PolicyWeights.policy`` of the weights this node runs."""
DOWNLOAD_TIMEOUT = 30.0
"""Seconds an http(s) weights download may take (our choice: a few MB on a local network)."""
TIMING_WINDOW = 1000
"""Ticks over which the period and latency percentiles are computed (50 s at 20 Hz)."""
_ENDING_PHASES = (EpisodePhase.RESETTING, EpisodePhase.IDLE, EpisodePhase.DONE)


@dataclass
class _Episode:
    episode_id: int
    mode: RunMode
    probe_steps: int
    step: int = 0

    @property
    def phase(self) -> Phase:
        """PROBING while the base policy acts alone (warm-up included), TAKEOVER from step k on."""
        if self.mode is RunMode.RESIDUAL_ONLY or (
            self.mode is RunMode.PROBE_TAKEOVER and self.step >= self.probe_steps
        ):
            return Phase.TAKEOVER
        return Phase.PROBING


def metadata_int(weights: VerifiedWeights, key: str, default: int) -> int:
    """An integer of the weights' metadata; WeightsError if it is there but not an integer."""
    text = weights.metadata.get(key)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise WeightsError(f"metadata {key!r} is not an integer: {text!r}") from None


class ResidualPolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("residual_policy")
        profile = load_node_profile(self)
        arm = control_arm(profile)
        if profile.policies is None:
            raise NodeConfigError(f"profile {profile.name!r} has no 'policies' section")
        views = profile.policies.base.views
        cameras = [profile.cameras[view] for view in views]
        sizes = {(c.policy_view.height, c.policy_view.width) for c in cameras}
        if len(sizes) != 1:
            raise NodeConfigError(
                f"the views {', '.join(views)} must share one policy_view size, got {sizes}"
            )
        self.images_shape = (len(views), *sizes.pop(), 3)
        self.robot_id = profile.robot_id
        self.config = actor_config(profile)
        self.controller = ResidualController(
            views, profile.policies.residual.xi, hold_time=profile.teleop.hold_time
        )
        self._reference = {k: v.clone() for k, v in ResidualActor(self.config).state_dict().items()}
        self.slot: WeightsSlot[ActorWeights] = WeightsSlot(
            self._initial_weights(profile.policies.residual.weights)
        )
        self.views = ViewCache(
            self,
            views,
            stale_after=min(c.stale_after for c in cameras),
            frame_period=max(1.0 / c.fps for c in cameras),
        )
        self.episode: _Episode | None = None
        self._state: RobotState | None = None
        self._human: HumanStep | None = None
        # The command must reach the arm driver before its next tick: one control period.
        self.timing = TickTiming(1.0 / profile.supervisor.control_rate, window=TIMING_WINDOW)
        self.counters = {
            "ticks": 0,
            "base_steps": 0,
            "combined_steps": 0,
            "human_steps": 0,
            "no_observation_ticks": 0,
            "unrecorded_ticks": 0,
            "rejected_weights": 0,
            "loaded_weights": 0,
        }
        self._last_rejection = ""
        self._downloads = Path(tempfile.mkdtemp(prefix="pld_residual_weights_"))
        self._announcements: queue.Queue[PolicyWeights | None] = queue.Queue()
        self._loader = threading.Thread(target=self._load_announced, name="weights", daemon=True)
        self._loader.start()

        self._command_pub = self.create_publisher(DeltaPoseCommand, f"{arm}/command", 10)
        self._record_pub = self.create_publisher(StepRecord, STEPS_TOPIC, STEPS_QOS)
        self._diag_pub = diagnostics_publisher(self)
        self._metrics = MetricTopics(self, "policy/residual")
        self.create_subscription(BaseAction, "policy/base/action", self._on_base_action, 10)
        self.create_subscription(RobotState, f"{arm}/state", self._on_state, 10)
        self.create_subscription(EpisodeEvent, "episode/events", self._on_event, EVENTS_QOS)
        self.create_subscription(DeltaPoseCommand, f"{arm}/teleop", self._on_teleop, 10)
        self.create_subscription(PolicyWeights, "policy/residual/weights", self._on_weights, LATCHED_QOS)
        self.create_timer(1.0, self._publish_diagnostics)
        start_heartbeat(self)
        version = self.slot.acquire().version
        self.get_logger().info(
            f"residual policy on {arm}, views {', '.join(views)}, weights version {version}"
        )

    # -- weights -------------------------------------------------------------------------------

    def _ready(self, tensors: dict[str, torch.Tensor] | None, updates: int) -> ActorWeights:
        # Exported to ONNX once per version, here rather than in the tick: the export takes about
        # a second, the ONNX session then runs the actor about 1.5x faster than torch eager.
        actor = ResidualActor(self.config).eval()
        if tensors is not None:
            actor.load_state_dict(tensors)
        return ActorWeights(OnnxRunner(actor, self.images_shape), self.config.residual_scale, updates)

    def _initial_weights(self, path: Path | None) -> Versioned[ActorWeights]:
        if path is None:
            return Versioned(0, self._ready(None, 0))
        try:
            weights = load_local(path, self._reference)
            version, updates = metadata_int(weights, "version", 0), metadata_int(weights, "updates", 0)
        except WeightsError as exc:
            raise NodeConfigError(f"policies.residual.weights: {exc}") from None
        return Versioned(version, self._ready(weights.tensors, updates))

    def _on_weights(self, message: PolicyWeights) -> None:
        if message.policy != POLICY_NAME:
            return
        self._announcements.put(message)

    def _load_announced(self) -> None:
        while (message := self._announcements.get()) is not None:
            try:
                self.slot.offer(Versioned(int(message.version), self._verified_actor(message)))
            # Whatever goes wrong with one announcement (a bad file, a failed export), the node
            # keeps its weights and the loader keeps serving the next announcements.
            except Exception as exc:
                self.counters["rejected_weights"] += 1
                self._last_rejection = f"version {message.version}: {exc}"
                self.get_logger().error(f"weights rejected, keeping the current ones: {self._last_rejection}")
                continue
            self.counters["loaded_weights"] += 1
            self.get_logger().info(f"weights version {message.version} verified; in use from the next tick")

    def _verified_actor(self, message: PolicyWeights) -> ActorWeights:
        self.slot.check_version(int(message.version))
        if message.format != "safetensors":
            raise WeightsError(f"format {message.format!r} is not accepted (safetensors only)")
        path = fetch(message.uri, self._downloads, DOWNLOAD_TIMEOUT)
        try:
            weights = load_verified(path, message.sha256, int(message.size), self._reference)
        finally:
            if path.parent == self._downloads:
                path.unlink(missing_ok=True)
        return self._ready(weights.tensors, metadata_int(weights, "updates", 0))

    # -- inputs --------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_state(self, state: RobotState) -> None:
        self._state = state

    def _on_teleop(self, command: DeltaPoseCommand) -> None:
        self._human = HumanStep(action_of(command), received=self._now())

    def _on_event(self, event: EpisodeEvent) -> None:
        if event.event == EpisodeEvent.STARTED:
            self.episode = _Episode(int(event.episode_id), RunMode(event.mode.value), int(event.probe_steps))
            self.get_logger().info(
                f"episode {event.episode_id} started: {self.episode.mode.name.lower()}, k={event.probe_steps}"
            )
        elif (
            self.episode is not None
            and event.episode_id == self.episode.episode_id
            and (event.event == EpisodeEvent.ENDED or event.phase.value in _ENDING_PHASES)
        ):
            self.episode = None

    # -- the tick ------------------------------------------------------------------------------

    def _on_base_action(self, base: BaseAction) -> None:
        # Ticks between episodes count too (they cost almost nothing): the period shows the
        # base actions' pace, not the gaps of the resets.
        started = time.perf_counter()
        self._tick(base)
        self.timing.record(started, time.perf_counter() - started)

    def _tick(self, base: BaseAction) -> None:
        episode = self.episode
        if episode is None:
            return
        if len(base.action) != ACTION_DIM:
            self.get_logger().error(
                f"base action with {len(base.action)} values ignored", throttle_duration_sec=5.0
            )
            return
        weights = self.slot.acquire()
        now = self._now()
        observation = None
        if self._state is not None:
            views = self.views.observation(self._state, "", now)
            observation = None if isinstance(views, NoSet) else views
        result = self.controller.tick(
            mode=episode.mode,
            probe_steps=episode.probe_steps,
            step=episode.step,
            base=np.asarray(base.action, dtype=np.float32),
            base_fresh=bool(base.fresh),
            weights=weights.value,
            observation=observation,
            human=self._human,
            now=now,
        )
        self._publish_command(base, episode, result, now)
        if observation is None:
            self.counters["unrecorded_ticks"] += 1
        else:
            self._publish_record(base, episode, result, observation, weights.version)
        episode.step += 1
        self._count(result)

    def _publish_command(self, base: BaseAction, episode: _Episode, result: TickResult, now: float) -> None:
        action = result.action
        command = DeltaPoseCommand(
            gripper=float(action[6]),
            source=ActionSourceMsg(value=int(result.source)),
            episode_id=episode.episode_id,
            step=episode.step,
            base_action_age=float(base.age) + (now - seconds(base.header.stamp)),
        )
        command.header.stamp = base.header.stamp
        command.translation.x, command.translation.y, command.translation.z = (float(v) for v in action[:3])
        command.rotation.x, command.rotation.y, command.rotation.z = (float(v) for v in action[3:6])
        self._command_pub.publish(command)

    def _publish_record(
        self, base: BaseAction, episode: _Episode, result: TickResult, observation: Observation, version: int
    ) -> None:
        record = StepRecord(
            robot_id=self.robot_id,
            episode_id=episode.episode_id,
            step=episode.step,
            xi=float(result.xi),
            base_policy=base.policy,
            residual_version=version,
            view_names=list(self.controller.views),
        )
        record.header.stamp = base.header.stamp
        record.mode.value = int(episode.mode)
        record.phase.value = int(episode.phase)
        record.source.value = int(result.source)
        record.views = [
            image_message(observation.views[view], base.header.stamp, view) for view in self.controller.views
        ]
        record.proprio = observation.proprio
        record.base_action = np.asarray(base.action, dtype=np.float32)
        record.residual = result.residual if result.residual is not None else np.zeros(ACTION_DIM, np.float32)
        record.executed_action = result.action
        self._record_pub.publish(record)

    def _count(self, result: TickResult) -> None:
        self.counters["ticks"] += 1
        key = {Source.BASE: "base_steps", Source.COMBINED: "combined_steps"}.get(result.source, "human_steps")
        self.counters[key] += 1
        if result.observation_missing:
            self.counters["no_observation_ticks"] += 1

    # -- diagnostics ---------------------------------------------------------------------------

    def _publish_diagnostics(self) -> None:
        # On the executor's thread, like the tick: between two ticks, so it may take new weights.
        current = self.slot.acquire()
        timing = self.timing.stats()
        level, message = DiagnosticStatus.OK, "running"
        if self._last_rejection:
            level, message = DiagnosticStatus.WARN, f"last weights rejected: {self._last_rejection}"
        values = {
            "weights_version": current.version,
            "weights_updates": current.value.updates,
            "xi": f"{xi_at(self.controller.xi, current.value.updates):.4f}",
            **timing.values(),
            "episode_id": self.episode.episode_id if self.episode else "",
            "last_rejection": self._last_rejection,
            **self.counters,
        }
        publish_status(
            self,
            self._diag_pub,
            level=level,
            name="pld/policy/residual",
            hardware_id=POLICY_NAME,
            message=message,
            values=values,
        )
        self._metrics.publish(
            {
                "weights_version": current.version,
                "xi": xi_at(self.controller.xi, current.value.updates),
                "tick_latency_p99_ms": timing.latency_p99 * 1e3,
                "deadline_misses": timing.deadline_misses,
            }
        )

    def destroy_node(self) -> None:
        self._announcements.put(None)
        self._loader.join(timeout=5.0)
        shutil.rmtree(self._downloads, ignore_errors=True)
        super().destroy_node()


def main() -> None:
    sys.exit(run_node(ResidualPolicyNode))


if __name__ == "__main__":
    main()
