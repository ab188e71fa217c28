"""Base policy node: one BaseAction per control tick, from chunks computed in a worker thread.

Each ``<arm>/state`` is a control tick (ticks count the states received). The node assembles the
tick's observation (the matched policy views, the proprioception, the profile's prompt), hands it
to :class:`~pld_ros.policies.async_inference.AsyncInference` (which starts an inference when one
is due, and waits at most its small budget), publishes every finished chunk on
``policy/base/chunk`` and exactly one ``policy/base/action``: the tick's row, or a hold. A stale
camera starts no inference and holds. An ``episode/events`` STARTED drops the chunks and resets
the backend. Faults of the backend (a dead server) are counted and shown on /diagnostics; the
robot holds until the backend answers again.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node

from pld_msgs.msg import ActionChunk, BaseAction, EpisodeEvent, RobotState, StageState
from pld_ros.core.action_chunks import Chunk, ChunkBuffer, ChunkConfig, TickAction
from pld_ros.core.frame_sync import NoSet
from pld_ros.core.observation import ACTION_DIM
from pld_ros.core.rate import TickTiming
from pld_ros.nodes.diagnostics import MetricTopics, diagnostics_publisher, publish_status
from pld_ros.nodes.heartbeat import start_heartbeat
from pld_ros.nodes.observations import ViewCache, seconds
from pld_ros.nodes.qos import EVENTS_QOS
from pld_ros.nodes.runner import NodeConfigError, control_arm, load_node_profile, run_node
from pld_ros.policies.async_inference import AsyncInference, InferenceConfig
from pld_ros.policies.base_policy import make_base_policy


class BasePolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("base_policy")
        profile = load_node_profile(self)
        arm = control_arm(profile)
        if profile.policies is None:
            raise NodeConfigError(f"profile {profile.name!r} has no 'policies' section")
        config = profile.policies.base
        self.prompt = config.prompt
        # One multi-task policy: each stage may say what to do in its own words.
        self._stage_prompts = {
            stage.name: stage.prompt or config.prompt
            for stage in (profile.reward.stages if profile.reward else ())
        }
        cameras = [profile.cameras[view] for view in config.views]
        try:
            policy = make_base_policy(config)
        except (OSError, ValueError) as exc:
            raise NodeConfigError(f"policies.base: {exc}") from None
        self.policy_name = policy.name
        period = 1.0 / profile.supervisor.control_rate
        self.runner = AsyncInference(
            policy,
            InferenceConfig(
                control_period=period, execute_steps=config.execute_steps, wait_budget=config.wait_budget
            ),
        )
        self.chunks = ChunkBuffer(
            ChunkConfig(temporal_ensemble=config.temporal_ensemble, ensemble_decay=config.ensemble_decay)
        )
        # The strictest camera decides when the policy stops seeing the scene; frames of the
        # slowest camera may lie a whole frame period apart from the others'.
        self.views = ViewCache(
            self,
            config.views,
            stale_after=min(c.stale_after for c in cameras),
            frame_period=max(1.0 / c.fps for c in cameras),
        )
        self.tick = 0
        self.episode_id = 0
        self.counters = {"ticks": 0, "fresh_ticks": 0, "stale_camera_ticks": 0, "chunks": 0, "resets": 0}
        self._window = {"ticks": 0, "fresh": 0}
        self._max_age = 0.0
        self._last_stale_reason = ""

        self._action_pub = self.create_publisher(BaseAction, "policy/base/action", 10)
        self._chunk_pub = self.create_publisher(ActionChunk, "policy/base/chunk", 10)
        self._diag_pub = diagnostics_publisher(self)
        self._metrics = MetricTopics(self, "policy/base")
        # The action must reach the residual node within the tick it is for.
        self.timing = TickTiming(period)
        self.create_subscription(RobotState, f"{arm}/state", self._on_state, 10)
        self.create_subscription(EpisodeEvent, "episode/events", self._on_event, EVENTS_QOS)
        if len(set(self._stage_prompts.values())) > 1:
            self.create_subscription(StageState, "stage/state", self._on_stage, 10)
        self.create_timer(1.0, self._publish_diagnostics)
        start_heartbeat(self)
        self.get_logger().info(
            f"base policy {self.policy_name} on {arm}/state, views {', '.join(config.views)}, "
            f"H={config.chunk_horizon} k={config.execute_steps}"
        )

    def _on_event(self, event: EpisodeEvent) -> None:
        if event.event != EpisodeEvent.STARTED:
            return
        self.episode_id = int(event.episode_id)
        self.chunks.reset()
        self.runner.reset()
        self.counters["resets"] += 1

    def _on_stage(self, stage: StageState) -> None:
        prompt = self._stage_prompts.get(stage.name, self.prompt)
        if prompt == self.prompt:
            return
        # Chunks predicted for the last stage's instruction are not this stage's actions.
        self.prompt = prompt
        self.chunks.reset()
        self.runner.reset()
        self.get_logger().info(f"stage {stage.name}: prompt {prompt!r}")

    def _on_state(self, state: RobotState) -> None:
        started = time.perf_counter()
        self._tick(state)
        self.timing.record(started, time.perf_counter() - started)

    def _tick(self, state: RobotState) -> None:
        tick, self.tick = self.tick, self.tick + 1
        tick_stamp = seconds(state.header.stamp)
        now = self.get_clock().now().nanoseconds * 1e-9
        observation = self.views.observation(state, self.prompt, now)
        finished = self.runner.step(None if isinstance(observation, NoSet) else observation, tick)
        for chunk in finished:
            self.chunks.add(chunk)
            self._publish_chunk(chunk)
        gripper = float(state.gripper_closure)
        if isinstance(observation, NoSet):
            # The scene is not seen: executing the rest of a chunk would be blind.
            self.counters["stale_camera_ticks"] += 1
            if observation.reason != self._last_stale_reason:
                self.get_logger().warning(f"no observation, holding: {observation.reason}")
            self._last_stale_reason = observation.reason
            result = self.chunks.hold(gripper)
        else:
            self._last_stale_reason = ""
            result = self.chunks.action_for(tick, tick_stamp, gripper)
        self._publish_action(state, result)
        self.counters["ticks"] += 1
        self._window["ticks"] += 1
        if result.fresh:
            self.counters["fresh_ticks"] += 1
            self._window["fresh"] += 1
            self._max_age = max(self._max_age, result.age)

    def _publish_action(self, state: RobotState, result: TickAction) -> None:
        message = BaseAction(
            episode_id=self.episode_id,
            action=[float(v) for v in result.action],
            fresh=result.fresh,
            age=float(result.age),
            chunk_index=result.chunk_index,
            chunk_id=result.chunk_id,
            chunks_averaged=result.chunks_averaged,
            policy=self.policy_name,
        )
        message.header = state.header
        self._action_pub.publish(message)

    def _publish_chunk(self, chunk: Chunk) -> None:
        self.counters["chunks"] += 1
        message = ActionChunk(
            episode_id=self.episode_id,
            step=chunk.step,
            horizon=chunk.horizon,
            action_dim=ACTION_DIM,
            actions=chunk.actions.astype(np.float32).ravel().tolist(),
            inference_time=float(chunk.inference_time),
            policy=self.policy_name,
        )
        sec = math.floor(chunk.stamp)
        message.header.stamp.sec, message.header.stamp.nanosec = int(sec), int((chunk.stamp - sec) * 1e9)
        self._chunk_pub.publish(message)

    def _publish_diagnostics(self) -> None:
        stats = self.runner.stats()
        timing = self.timing.stats()
        connected = self.runner.policy.connected
        window, self._window = self._window, {"ticks": 0, "fresh": 0}
        fresh_fraction = window["fresh"] / window["ticks"] if window["ticks"] else 0.0
        if not connected:
            level, message = (
                DiagnosticStatus.ERROR,
                "not connected" + (f": {stats.last_error}" if stats.last_error else ""),
            )
        elif window["ticks"] and fresh_fraction == 0.0:
            level, message = DiagnosticStatus.WARN, "no fresh action in the last second"
        else:
            level, message = DiagnosticStatus.OK, f"fresh {fresh_fraction:.0%}"
        values = {
            "policy": self.policy_name,
            "connected": str(connected).lower(),
            "inference_p50_ms": f"{stats.latency_p50 * 1e3:.1f}",
            "inference_p99_ms": f"{stats.latency_p99 * 1e3:.1f}",
            "latency_estimate_ms": f"{stats.latency * 1e3:.1f}",
            "fresh_fraction": f"{fresh_fraction:.3f}",
            "max_age_ms": f"{self._max_age * 1e3:.1f}",
            "inferences": stats.inferences,
            "errors": stats.faults,
            "last_error": stats.last_error,
            "episode_id": self.episode_id,
            **timing.values(),
            **self.counters,
        }
        self._metrics.publish(
            {
                "inference_p50_ms": stats.latency_p50 * 1e3,
                "inference_p99_ms": stats.latency_p99 * 1e3,
                "fresh_fraction": fresh_fraction,
                "max_age_ms": self._max_age * 1e3,
                "tick_latency_p99_ms": timing.latency_p99 * 1e3,
            }
        )
        self._max_age = 0.0
        publish_status(
            self,
            self._diag_pub,
            level=level,
            name="pld/policy/base",
            hardware_id=self.policy_name,
            message=message,
            values=values,
        )

    def destroy_node(self) -> None:
        self.runner.close()
        super().destroy_node()


def main() -> None:
    sys.exit(run_node(BasePolicyNode))


if __name__ == "__main__":
    main()
