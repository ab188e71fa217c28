"""Fresh vs stale base actions with a slow VLA, without ROS: AsyncInference + ChunkBuffer at 20 Hz.

The policy is simulated: each inference sleeps ``--latency`` s (300 ms: a pi0 server on a remote
GPU) and answers an H x 7 chunk. For each (H, k) setting the control loop ticks at the control
rate on absolute deadlines, hands each tick's observation to the runner and takes the tick's
action from the chunks. Reports per setting: the fraction of ticks on a fresh chunk row vs a
hold, the age of the executed rows (observation to tick), and the longest tick handler (what the
20 Hz loop pays for the policy: at most the wait budget).

    scripts/in_env.sh python -m bench.base_policy_staleness
    scripts/in_env.sh python -m bench.base_policy_staleness --seconds 60 --latency 0.3
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from pld_ros.core.action_chunks import ChunkBuffer
from pld_ros.core.observation import ACTION_DIM, Float32Array, Observation
from pld_ros.core.rate import RateKeeper
from pld_ros.policies.async_inference import AsyncInference, InferenceConfig

SETTINGS = ((1, 1), (10, 5), (16, 8), (50, 25))
"""(H, k) pairs measured by default."""


class SimulatedVla:
    """Sleeps ``latency`` s per inference, then answers an ``horizon`` x 7 chunk of zeros."""

    name = "simulated"
    connected = True

    def __init__(self, latency: float, horizon: int) -> None:
        self.latency = latency
        self.horizon = horizon

    def infer(self, observation: Observation) -> Float32Array:
        time.sleep(self.latency)
        return np.zeros((self.horizon, ACTION_DIM), dtype=np.float32)

    def reset(self) -> None:
        """Stateless."""

    def close(self) -> None:
        """Nothing to release."""


def measure(horizon: int, execute: int, latency: float, seconds: float, rate: float) -> dict[str, float]:
    runner = AsyncInference(
        SimulatedVla(latency, horizon), InferenceConfig(control_period=1.0 / rate, execute_steps=execute)
    )
    buffer = ChunkBuffer()
    keeper = RateKeeper(rate)
    view = np.zeros((128, 128, 3), dtype=np.uint8)
    fresh, ages, handler = [], [], []
    try:
        for tick in range(int(seconds * rate)):
            now = keeper.wait()
            observation = Observation(
                views={"wrist": view}, proprio=np.zeros(8, np.float32), prompt="", stamp=now
            )
            for chunk in runner.step(observation, tick):
                buffer.add(chunk)
            result = buffer.action_for(tick, now, gripper=0.0)
            handler.append(time.monotonic() - now)
            fresh.append(result.fresh)
            if not math.isnan(result.age):
                ages.append(result.age)
        stats = runner.stats()
    finally:
        runner.close()
    warmup = fresh.index(True) if True in fresh else len(fresh)
    steady = fresh[warmup:]
    age = np.asarray(ages) if ages else np.asarray([math.nan])
    return {
        "fresh": float(np.mean(fresh)),
        "fresh_steady": float(np.mean(steady)) if steady else 0.0,
        "age_p99_ms": float(np.percentile(age, 99)) * 1e3,
        "age_max_ms": float(age.max()) * 1e3,
        "handler_p99_ms": float(np.percentile(handler, 99)) * 1e3,
        "handler_max_ms": max(handler) * 1e3,
        "missed_ticks": float(keeper.missed),
        "inferences": float(stats.inferences),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of each setting")
    parser.add_argument("--latency", type=float, default=0.3, help="simulated inference time, s")
    parser.add_argument("--rate", type=float, default=20.0, help="control rate, Hz")
    args = parser.parse_args()
    print(f"simulated VLA {args.latency * 1e3:.0f} ms, {args.rate:g} Hz, {args.seconds:g} s per setting")
    print(
        f"{'H':>3} {'k':>3} {'fresh':>7} {'stale':>7} {'fresh*':>7} {'age p99 ms':>11} {'age max ms':>11} "
        f"{'handler p99/max ms':>19} {'missed':>7} {'chunks':>7}"
    )
    for horizon, execute in SETTINGS:
        r = measure(horizon, execute, args.latency, args.seconds, args.rate)
        print(
            f"{horizon:>3} {execute:>3} {r['fresh']:>7.1%} {1 - r['fresh']:>7.1%} {r['fresh_steady']:>7.1%} "
            f"{r['age_p99_ms']:>11.0f} {r['age_max_ms']:>11.0f} "
            f"{r['handler_p99_ms']:>9.2f}/{r['handler_max_ms']:<9.2f} "
            f"{int(r['missed_ticks']):>7} {int(r['inferences']):>7}",
            flush=True,
        )
    print("fresh*: after the first chunk arrived. age: observation to tick, fresh ticks only.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
