"""The subscriber behind ``pld status``: keeps the newest message of each topic the dashboard
shows as a plain :class:`~pld_ros.core.dashboard.Snapshot`; :mod:`pld_ros.core.dashboard` draws it.

Topics (relative ones in the graph's namespace): ``episode/status``, ``stage/state``,
``trainer/metrics``, ``loop/stats``, ``/diagnostics`` (every status, whichever graph sent it) and
``/pld/heartbeat`` (the nodes under the namespace).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import datetime

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import Header

from pld_msgs.msg import (
    EpisodeOutcome,
    EpisodePhase,
    EpisodeStatus,
    LoopStats,
    RunMode,
    StageState,
    TrainingMetrics,
)
from pld_ros.core.dashboard import (
    DiagnosticView,
    EpisodeView,
    LoopView,
    Snapshot,
    StageView,
    TrainerView,
    render,
)
from pld_ros.core.liveness import Liveness
from pld_ros.graph import HEARTBEAT_TOPIC
from pld_ros.nodes.diagnostics import DIAGNOSTICS_TOPIC
from pld_ros.nodes.qos import LATCHED_QOS

HEARTBEAT_STALE_AFTER = 2.0
"""s without a heartbeat before a node shows as not beating (nodes beat at 2 Hz; the health
monitor's default)."""
_CLEAR = "\x1b[H\x1b[2J"
"""ANSI: cursor home, clear the screen."""


def _constant_name(message_type: type, value: int) -> str:
    """The name of a message's constant with ``value`` (``EpisodePhase.TAKEOVER`` -> "TAKEOVER")."""
    for name in dir(message_type):
        if name.isupper() and not name.startswith("_") and getattr(message_type, name) == value:
            return name
    return str(value)


_STAGE_STATUS = {
    StageState.STATUS_ACTIVE: "active",
    StageState.STATUS_SUCCEEDED: "succeeded",
    StageState.STATUS_FAILED: "failed",
    StageState.STATUS_RECOVERING: "recovering",
}


class StatusMonitor(Node):
    """Subscribes to what the dashboard shows; :attr:`snapshot` is what arrived so far."""

    def __init__(self, namespace: str = "", context: Context | None = None) -> None:
        # The process id keeps two dashboards on one graph apart.
        super().__init__(f"pld_status_{os.getpid()}", namespace=namespace or "/", context=context)
        self._namespace = namespace.rstrip("/")
        self.snapshot = Snapshot(namespace=self._namespace)
        self._liveness = Liveness(stale_after=HEARTBEAT_STALE_AFTER)
        self.create_subscription(EpisodeStatus, "episode/status", self._on_episode, 10)
        self.create_subscription(StageState, "stage/state", self._on_stage, 10)
        self.create_subscription(TrainingMetrics, "trainer/metrics", self._on_trainer, 10)
        self.create_subscription(LoopStats, "loop/stats", self._on_loop, LATCHED_QOS)
        self.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_diagnostics, 50)
        self.create_subscription(Header, HEARTBEAT_TOPIC, self._on_heartbeat, 50)

    def _on_episode(self, m: EpisodeStatus) -> None:
        self.snapshot.episode = EpisodeView(
            received=time.monotonic(),
            robot_id=m.robot_id,
            episode_id=int(m.episode_id),
            phase=_constant_name(EpisodePhase, m.phase.value),
            mode=_constant_name(RunMode, m.mode.value),
            step=int(m.step),
            probe_steps=int(m.probe_steps),
            stage_name=m.stage_name,
            stage_index=int(m.stage_index),
            paused=bool(m.paused),
            estopped=bool(m.estopped),
            episodes_completed=int(m.episodes_completed),
            successes=int(m.successes),
            aborted=int(m.aborted),
            last_outcome=_constant_name(EpisodeOutcome, m.last_outcome.value),
            success_probability=float(m.success_probability),
        )

    def _on_stage(self, m: StageState) -> None:
        self.snapshot.stage = StageView(
            received=time.monotonic(),
            name=m.name,
            index=int(m.index),
            status=_STAGE_STATUS.get(m.status, str(m.status)),
            time_in_stage=float(m.time_in_stage),
            cycle=int(m.cycle),
            reason=m.reason,
        )

    def _on_trainer(self, m: TrainingMetrics) -> None:
        self.snapshot.trainer = TrainerView(
            received=time.monotonic(),
            trainer_id=m.trainer_id,
            version=int(m.version),
            updates=int(m.updates),
            updates_per_second=float(m.updates_per_second),
            critic_loss=float(m.critic_loss),
            actor_loss=float(m.actor_loss),
            q_mean=float(m.q_mean),
            temperature=float(m.temperature),
            xi=float(m.xi),
            offline_transitions=int(m.offline_transitions),
            online_transitions=int(m.online_transitions),
            episodes=int(m.episodes),
        )

    def _on_loop(self, m: LoopStats) -> None:
        self.snapshot.loop = LoopView(
            received=time.monotonic(),
            cycles=int(m.cycles),
            mean_cycle_time=float(m.mean_cycle_time),
            attempts=int(m.attempts),
            recoveries=int(m.recoveries),
            recovered=int(m.recovered),
            interventions=int(m.interventions),
            longest_unattended=float(m.longest_unattended),
            stages=tuple(
                (name, int(tries), int(ok))
                for name, tries, ok in zip(m.stages, m.stage_attempts, m.stage_successes, strict=False)
            ),
        )

    def _on_diagnostics(self, array: DiagnosticArray) -> None:
        now = time.monotonic()
        for status in array.status:
            self.snapshot.diagnostics[status.name] = DiagnosticView(
                received=now,
                name=status.name,
                level=ord(status.level),
                message=status.message,
                hardware_id=status.hardware_id,
                values={kv.key: kv.value for kv in status.values},
            )

    def _on_heartbeat(self, beat: Header) -> None:
        if not self._namespace or beat.frame_id.startswith(self._namespace + "/"):
            self._liveness.beat(beat.frame_id, time.monotonic())

    def take(self) -> Snapshot:
        """The snapshot with the nodes' liveness as of now."""
        self.snapshot.nodes = self._liveness.states(time.monotonic())
        return self.snapshot


def run_status(
    namespace: str,
    *,
    once: bool,
    wait: float,
    interval: float,
    echo: Callable[[str], None] = print,
) -> int:
    """``pld status``: with ``once``, listen ``wait`` s, print one snapshot and return 0, or 1 if
    nothing was heard; else redraw every ``interval`` s until Ctrl-C (then 0)."""
    context = Context()
    # Ctrl-C must reach this loop as KeyboardInterrupt, not shut rclpy down under it.
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    monitor = StatusMonitor(namespace, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(monitor)

    def spin_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            executor.spin_once(timeout_sec=left)

    def draw() -> list[str]:
        return render(monitor.take(), time.monotonic(), datetime.now().strftime("%H:%M:%S"))

    try:
        if once:
            spin_for(wait)
            echo("\n".join(draw()))
            return 0 if monitor.snapshot.heard else 1
        while True:
            spin_for(interval)
            echo(_CLEAR + "\n".join(draw()))
            sys.stdout.flush()
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        executor.shutdown()
        monitor.destroy_node()
        rclpy.try_shutdown(context=context)
