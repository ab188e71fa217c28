"""Stage 3 fine-tuning cost on this CPU: training steps/s of each action head and the exported
model's inference latency, next to the shipped base policy's.

Each head (:mod:`pld_ros.models.sft_policy`, default config: chunk of 4, two 128x128 views) takes
randomly shifted views, proprioception and action chunks of random data (the cost does not depend
on the values), batch 32; the median step time of ``--steps`` timed steps after 3 warm-up steps.
Then the head is exported to ONNX and run as the base-policy node runs it (batch 1, one thread).

    scripts/in_env.sh python bench/sft_throughput.py --threads 1 --steps 30
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pld_ros.core.observation import ACTION_DIM, PROPRIO_DIM
from pld_ros.learning.augmentation import random_shift
from pld_ros.models.sft_policy import AutoregressiveConfig, FlowMatchingConfig, export_onnx, make_policy
from pld_ros.policies.onnx_runtime import inference_session
from pld_ros.training.sft import SftTrainingConfig, learning_rate, make_optimizer, train_step

BATCH, POOL, VIEWS, SIZE, SHIFT = 32, 256, 2, 128, 4
BASE_POLICY = Path(__file__).resolve().parents[1] / "config" / "models" / "franka_pick_cube_base.onnx"


def latency_ms(run: Callable[[], object], warmup: int = 20, runs: int = 300) -> tuple[float, float]:
    """p50 and p99 of ``run``'s wall time, ms."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    p50, p99 = np.percentile(np.array(times) * 1e3, [50, 99])
    return float(p50), float(p99)


def onnx_latency_ms(model: Path, feed: dict[str, np.ndarray]) -> tuple[float, float]:
    """p50 and p99 of one batch-1 run of ``model``, one thread, as the base-policy node runs it."""
    session = inference_session(str(model), threads=1, providers=["CPUExecutionProvider"])
    return latency_ms(lambda: session.run(None, feed))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads for training")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per head")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    views = torch.from_numpy(rng.integers(0, 256, (POOL, VIEWS, SIZE, SIZE, 3), dtype=np.uint8))
    proprio = torch.randn(POOL, PROPRIO_DIM)
    feed = {"images": views[:1].numpy(), "proprio": proprio[:1].numpy()}
    print(f"torch {torch.__version__}, {args.threads} training thread(s), batch {BATCH}")
    for config in (FlowMatchingConfig(), AutoregressiveConfig()):
        policy = make_policy(config)
        chunks = torch.randn(POOL, config.chunk_horizon, ACTION_DIM) * 0.01
        policy.set_statistics(proprio.numpy(), chunks.reshape(-1, ACTION_DIM).numpy())
        training = SftTrainingConfig()
        optimizer = make_optimizer(policy, training)
        times = []
        for step in range(args.steps + 3):
            started = time.perf_counter()
            index = torch.randint(POOL, (BATCH,))
            batch = (random_shift(views[index], SHIFT), proprio[index], chunks[index])
            train_step(policy, optimizer, batch, learning_rate(step, training), training.grad_clip)
            times.append(time.perf_counter() - started)
        step_time = float(np.median(times[3:]))
        parameters = sum(p.numel() for p in policy.parameters()) / 1e6
        with tempfile.TemporaryDirectory() as directory:
            exported = export_onnx(policy, Path(directory) / "policy.onnx")
            p50, p99 = onnx_latency_ms(exported, feed)
        print(
            f"{policy.head}: {parameters:.2f} M parameters, {1 / step_time:.2f} training steps/s "
            f"({BATCH / step_time:.0f} frames/s); ONNX batch 1, 1 thread: p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        )
    p50, p99 = onnx_latency_ms(BASE_POLICY, feed)
    print(f"shipped base policy ({BASE_POLICY.name}): p50 {p50:.2f} ms, p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()
