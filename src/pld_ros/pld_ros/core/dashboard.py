"""``pld status``: the running graph at a glance, as lines of text for a terminal without a display.

ROS-free: the subscriber (:mod:`pld_ros.nodes.status_monitor`) turns the newest message of each
topic into the plain snapshots below and :func:`render` turns a :class:`Snapshot` into lines.
Every part is optional: a graph without a trainer shows no trainer line, a section whose topic
went quiet shows how long ago it was heard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

from pld_ros.core.liveness import SourceState

OK: Final = 0
WARN: Final = 1
ERROR: Final = 2
STALE: Final = 3
LEVELS: Final = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}
"""diagnostic_msgs/DiagnosticStatus levels and their names."""
QUIET_AFTER: Final = 3.0
"""s after which a section's last message is shown with its age (its topic went quiet)."""
MAX_WARNINGS: Final = 12
"""Non-OK statuses listed, worst first; the rest are counted."""
TIMING_KEYS: Final = ("loop_rate_hz", "loop_period_p99_ms", "tick_latency_p99_ms", "deadline_misses")
"""The loop-timing key-values of /diagnostics (docs/topics.md) the timing table shows."""


@dataclass(frozen=True)
class EpisodeView:
    """The newest ``episode/status``."""

    received: float
    """When it arrived, s on the caller's monotonic clock (as ``now`` of :func:`render`)."""
    robot_id: str
    episode_id: int
    phase: str
    mode: str
    step: int
    probe_steps: int
    stage_name: str
    stage_index: int
    paused: bool
    estopped: bool
    episodes_completed: int
    successes: int
    aborted: int
    last_outcome: str
    success_probability: float


@dataclass(frozen=True)
class StageView:
    """The newest ``stage/state``."""

    received: float
    name: str
    index: int
    status: str
    time_in_stage: float
    cycle: int
    reason: str


@dataclass(frozen=True)
class TrainerView:
    """The newest ``trainer/metrics``."""

    received: float
    trainer_id: str
    version: int
    updates: int
    updates_per_second: float
    critic_loss: float
    actor_loss: float
    q_mean: float
    temperature: float
    xi: float
    offline_transitions: int
    online_transitions: int
    episodes: int


@dataclass(frozen=True)
class LoopView:
    """The newest ``loop/stats`` (long-horizon loops only)."""

    received: float
    cycles: int
    mean_cycle_time: float
    attempts: int
    recoveries: int
    recovered: int
    interventions: int
    longest_unattended: float
    stages: tuple[tuple[str, int, int], ...]
    """Per stage: name, attempts, successes."""


@dataclass(frozen=True)
class DiagnosticView:
    """The newest status of one name on /diagnostics."""

    received: float
    name: str
    level: int
    message: str
    hardware_id: str
    values: dict[str, str] = field(default_factory=dict)


@dataclass
class Snapshot:
    """What the dashboard has heard so far."""

    namespace: str = ""
    episode: EpisodeView | None = None
    stage: StageView | None = None
    trainer: TrainerView | None = None
    loop: LoopView | None = None
    diagnostics: dict[str, DiagnosticView] = field(default_factory=dict)
    nodes: list[tuple[str, SourceState]] = field(default_factory=list)
    """Each node that beat on the heartbeat topic, with its liveness."""

    @property
    def heard(self) -> bool:
        """Anything arrived at all."""
        parts = (self.episode, self.stage, self.trainer, self.loop)
        return any(part is not None for part in parts) or bool(self.diagnostics) or bool(self.nodes)


def _number(value: float, fmt: str = ".3g") -> str:
    return "n/a" if math.isnan(value) else format(value, fmt)


def _age(received: float, now: float) -> str:
    age = now - received
    return f"  (last heard {age:.0f} s ago)" if age > QUIET_AFTER else ""


def success_rate(successes: int, completed: int, aborted: int) -> float:
    """Successes over episodes that were not aborted (as the run's summary counts); NaN if none."""
    counted = completed - aborted
    return successes / counted if counted > 0 else math.nan


def _episode_lines(view: EpisodeView, now: float) -> list[str]:
    state = "E-STOPPED" if view.estopped else "paused" if view.paused else view.phase.lower()
    probe = f" (k={view.probe_steps})" if view.mode == "PROBE_TAKEOVER" else ""
    rate = success_rate(view.successes, view.episodes_completed, view.aborted)
    return [
        f"episode   {view.episode_id} {state}, {view.mode.lower()}, step {view.step}{probe}, "
        f"last outcome {view.last_outcome.lower()}{_age(view.received, now)}",
        f"run       {view.episodes_completed} episodes, {view.successes} successes, {view.aborted} aborted: "
        f"success rate {_number(100.0 * rate, '.1f')} %",
    ]


def _stage_line(view: StageView, now: float) -> str:
    reason = f" ({view.reason})" if view.reason else ""
    return (
        f"stage     {view.name} [{view.index}] {view.status.lower()} for {view.time_in_stage:.1f} s, "
        f"cycle {view.cycle}{reason}{_age(view.received, now)}"
    )


def _trainer_lines(view: TrainerView, now: float) -> list[str]:
    return [
        f"trainer   {view.trainer_id}: weights v{view.version}, {view.updates} updates, "
        f"{_number(view.updates_per_second, '.1f')} updates/s, buffers {view.offline_transitions} offline / "
        f"{view.online_transitions} online transitions, {view.episodes} episodes{_age(view.received, now)}",
        f"          critic loss {_number(view.critic_loss)}, actor loss {_number(view.actor_loss)}, "
        f"Q {_number(view.q_mean)}, temperature {_number(view.temperature)}, xi {_number(view.xi)}",
    ]


def _loop_lines(view: LoopView, now: float) -> list[str]:
    stages = ", ".join(f"{name} {ok}/{tries}" for name, tries, ok in view.stages)
    return [
        f"loop      {view.cycles} cycles (mean {_number(view.mean_cycle_time, '.1f')} s), {view.attempts} "
        f"attempts, {view.recovered}/{view.recoveries} recoveries, {view.interventions} interventions, "
        f"longest unattended {view.longest_unattended:.0f} s{_age(view.received, now)}",
        f"          stages (successes/attempts): {stages or 'none yet'}",
    ]


def _timing_lines(diagnostics: list[DiagnosticView]) -> list[str]:
    timed = [d for d in diagnostics if "loop_rate_hz" in d.values]
    if not timed:
        return []
    width = max(len(d.name) for d in timed)
    header = f"{'status':<{width}}  {'Hz':>6}  {'p99 period':>10}  {'p99 work':>9}  {'over deadline':>13}"
    lines = [f"timing    {header}"]
    for d in timed:
        rate, period, latency, misses = (d.values.get(key, "?") for key in TIMING_KEYS)
        missed = d.values.get("loop_missed_ticks")
        late = misses + (f" (+{missed} missed)" if missed not in (None, "0") else "")
        lines.append(
            f"          {d.name:<{width}}  {rate:>6}  {period + ' ms':>10}  {latency + ' ms':>9}  {late:>13}"
        )
    return lines


def _node_line(nodes: list[tuple[str, SourceState]]) -> str:
    alive = [name for name, state in nodes if state.alive]
    stale = [f"{name} ({state.describe()})" for name, state in nodes if not state.alive]
    line = f"nodes     {len(alive)} alive"
    return line + (f", {len(stale)} not beating: " + ", ".join(stale) if stale else "")


def _diagnostic_lines(diagnostics: list[DiagnosticView], now: float) -> list[str]:
    counts = {name: sum(d.level == level for d in diagnostics) for level, name in LEVELS.items()}
    summary = ", ".join(f"{count} {name}" for name, count in counts.items() if count)
    lines = [f"health    {len(diagnostics)} statuses: {summary}"]
    bad = sorted((d for d in diagnostics if d.level != OK), key=lambda d: (-d.level, d.name))
    for d in bad[:MAX_WARNINGS]:
        level = LEVELS.get(d.level, str(d.level))
        lines.append(f"  {level:<5} {d.name}: {d.message}{_age(d.received, now)}")
    if len(bad) > MAX_WARNINGS:
        lines.append(f"  ... and {len(bad) - MAX_WARNINGS} more")
    return lines


def render(snapshot: Snapshot, now: float, clock: str = "") -> list[str]:
    """The dashboard's lines for ``snapshot`` at time ``now`` (the clock of the views'
    ``received``); ``clock``: the wall-clock time to show in the title."""
    title = f"pld status {snapshot.namespace or '/'}" + (f"  {clock}" if clock else "")
    lines = [title, "=" * len(title)]
    if not snapshot.heard:
        return [*lines, "nothing heard yet: is the graph running (same ROS_DOMAIN_ID, namespace)?"]
    if snapshot.episode is not None:
        lines += _episode_lines(snapshot.episode, now)
    else:
        lines.append("episode   no episode/status (no supervisor?)")
    if snapshot.stage is not None:
        lines.append(_stage_line(snapshot.stage, now))
    if snapshot.loop is not None:
        lines += _loop_lines(snapshot.loop, now)
    if snapshot.trainer is not None:
        lines += _trainer_lines(snapshot.trainer, now)
    diagnostics = sorted(snapshot.diagnostics.values(), key=lambda d: d.name)
    lines += _timing_lines(diagnostics)
    if snapshot.nodes:
        lines.append(_node_line(snapshot.nodes))
    if diagnostics:
        lines += _diagnostic_lines(diagnostics, now)
    return lines
