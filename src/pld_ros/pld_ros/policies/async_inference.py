"""Run the base policy in a worker thread, so that a slow VLA never blocks the control tick.

The control thread calls :meth:`AsyncInference.step` once per tick with that tick's observation.
A new inference starts when the worker is idle and it is *due*: when the newest chunk's first
``execute_steps`` (k) rows will have run out by the time a chunk started now arrives,

    newest.step + k - tick <= latency in ticks,

with the latency an exponential moving average of recent inference times (0 ticks while it is
within the wait budget, else rounded up to whole ticks). A fast policy with k = 1 is thus asked
every tick; a 300 ms one at 20 Hz with k = 8 is asked 6 ticks before its chunk's 8th row.

To keep a fast policy synchronous, :meth:`~AsyncInference.step` waits up to
:attr:`InferenceConfig.wait_budget` for an inference it started on this very tick's
observation, and only while the latency estimate is within that budget (a policy known to be
slow is not waited for); it never waits for one started earlier. Whatever finished is returned as chunks.

A backend exception is a fault: counted, kept as the last error; the worker goes on, and since
no chunk arrived the next tick's observation is due again (remote backends pace their own
reconnects, see :mod:`~pld_ros.policies.openpi_client`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from pld_ros.core.action_chunks import Chunk
from pld_ros.core.observation import Observation
from pld_ros.policies.base_policy import BasePolicy


@dataclass(frozen=True)
class InferenceConfig:
    """Scheduling of the base policy's inferences."""

    control_period: float
    """Seconds between control ticks (1 / supervisor.control_rate)."""
    execute_steps: int = 1
    """k: rows of each chunk meant to be executed before the next chunk takes over."""
    wait_budget: float = 0.010
    """Seconds a tick may wait for an inference on its own observation (our default: 10 ms, a
    fifth of a 20 Hz period, enough for a small ONNX or TorchScript model on a CPU)."""
    latency_smoothing: float = 0.3
    """Weight of the newest inference time in the latency moving average (1: the last one only)."""
    stats_window: int = 200
    """Recent inference times the percentiles cover."""

    def __post_init__(self) -> None:
        if not self.control_period > 0.0:
            raise ValueError(f"control_period must be positive, got {self.control_period}")
        if self.execute_steps < 1:
            raise ValueError(f"execute_steps must be at least 1, got {self.execute_steps}")
        if not 0.0 <= self.wait_budget < self.control_period:
            raise ValueError(
                f"wait_budget must be in [0, control_period={self.control_period}), got {self.wait_budget}"
            )
        if not 0.0 < self.latency_smoothing <= 1.0:
            raise ValueError(f"latency_smoothing must be in (0, 1], got {self.latency_smoothing}")
        if self.stats_window < 1:
            raise ValueError(f"stats_window must be at least 1, got {self.stats_window}")


@dataclass(frozen=True)
class InferenceStats:
    inferences: int
    """Chunks computed (including those discarded by a reset)."""
    faults: int
    """Backend calls that raised."""
    last_error: str
    """The last fault's message; empty when none."""
    latency: float
    """Moving average of the inference time, s (0 before the first)."""
    latency_p50: float
    """Median of recent inference times, s (NaN before the first)."""
    latency_p99: float
    busy: bool
    """An inference is running."""


@dataclass(frozen=True)
class _Job:
    observation: Observation
    tick: int
    generation: int


class AsyncInference:
    """Computes chunks from observations in a worker thread; owns (and closes) ``policy``."""

    def __init__(
        self, policy: BasePolicy, config: InferenceConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy
        self.config = config
        self._clock = clock
        self._cond = threading.Condition()
        self._job: _Job | None = None
        self._busy = False
        self._closed = False
        self._done: list[Chunk] = []
        # A reset starts a new generation: a chunk computed from an older observation is dropped.
        self._generation = 0
        self._reset_pending = False
        self._newest_step: int | None = None
        self._next_id = 1
        self._latency: float | None = None
        self._times: deque[float] = deque(maxlen=config.stats_window)
        self._inferences = 0
        self._faults = 0
        self._last_error = ""
        self._thread = threading.Thread(target=self._work, name="base-policy-inference", daemon=True)
        self._thread.start()

    # -- the control thread ----------------------------------------------------------------------

    def step(self, observation: Observation | None, tick: int) -> list[Chunk]:
        """Start an inference on ``observation`` if one is due; return the chunks finished since.

        ``None`` (no usable observation, e.g. a stale camera) starts nothing. Waits at most the
        wait budget, and only for an inference started here.
        """
        with self._cond:
            if observation is not None and not self._busy and self._due(tick):
                self._job = _Job(observation, tick, self._generation)
                self._busy = True
                self._cond.notify_all()
                # Waiting only pays off for a policy that can answer within the budget.
                if self.config.wait_budget > 0.0 and self.latency_ticks() == 0:
                    self._cond.wait_for(lambda: not self._busy, timeout=self.config.wait_budget)
            chunks, self._done = self._done, []
        return chunks

    def _due(self, tick: int) -> bool:
        if self._newest_step is None:
            return True
        return self._newest_step + self.config.execute_steps - tick <= self.latency_ticks()

    def latency_ticks(self) -> int:
        """The latency estimate in whole ticks; 0 while inferences finish within the wait budget."""
        if self._latency is None or self._latency <= self.config.wait_budget:
            return 0
        return math.ceil(self._latency / self.config.control_period)

    def reset(self) -> None:
        """A new episode: drop finished and running chunks; the backend resets before its next call."""
        with self._cond:
            self._generation += 1
            self._reset_pending = True
            self._newest_step = None
            self._done.clear()
            if self._job is not None:  # requested but not started: withdraw it
                self._job = None
                self._busy = False

    def stats(self) -> InferenceStats:
        with self._cond:
            times = np.asarray(self._times, dtype=np.float64)
            p50, p99 = np.percentile(times, [50, 99]) if times.size else (math.nan, math.nan)
            return InferenceStats(
                inferences=self._inferences,
                faults=self._faults,
                last_error=self._last_error,
                latency=self._latency or 0.0,
                latency_p50=float(p50),
                latency_p99=float(p99),
                busy=self._busy,
            )

    def close(self, timeout: float = 2.0) -> None:
        """Stop the worker (waiting up to ``timeout`` for a running inference) and close the policy."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=timeout)
        self.policy.close()

    # -- the worker ------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._job is not None or self._closed)
                if self._closed:
                    return
                job, self._job = self._job, None
                reset, self._reset_pending = self._reset_pending, False
            assert job is not None
            start = self._clock()
            try:
                if reset:
                    self.policy.reset()
                actions = self.policy.infer(job.observation)
                elapsed = self._clock() - start
                # Built here so that a malformed answer is a fault like any other.
                chunk = Chunk(actions, job.tick, job.observation.stamp, chunk_id=0, inference_time=elapsed)
            except Exception as exc:
                self._finish_fault(f"{type(exc).__name__}: {exc}")
                continue
            self._finish(job, chunk)

    def _finish_fault(self, error: str) -> None:
        with self._cond:
            self._busy = False
            self._faults += 1
            self._last_error = error
            self._cond.notify_all()

    def _finish(self, job: _Job, chunk: Chunk) -> None:
        with self._cond:
            self._busy = False
            self._inferences += 1
            elapsed = chunk.inference_time
            self._times.append(elapsed)
            alpha = self.config.latency_smoothing
            self._latency = (
                elapsed if self._latency is None else alpha * elapsed + (1 - alpha) * self._latency
            )
            if job.generation == self._generation:
                self._done.append(replace(chunk, chunk_id=self._next_id))
                self._next_id += 1
                if self._newest_step is None or job.tick > self._newest_step:
                    self._newest_step = job.tick
            self._cond.notify_all()
