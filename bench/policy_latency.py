"""CPU latency of the residual actor and the success classifier on two 128x128 views.

What a control tick costs on the robot's CPU: the residual actor (torch, ``inference_mode``; its
stochastic ``act`` as in PROBE_TAKEOVER, and the ONNX export the residual node runs) and the
success classifier (ONNX through onnxruntime, and torch), each on one observation of two 128x128
views, for the default (halved) and the paper ResNet-10 widths. ``actor+classifier`` runs both in
series in one loop, as one tick's work: the pessimistic figure, since on the robot they run in two
processes that may each take a core.

Goal (issue "policy layer"): p99 of residual + classifier <= 15 ms.

    scripts/in_env.sh python bench/policy_latency.py --iterations 2000

``--threads`` sets torch's and onnxruntime's intra-op threads (1: each node on its own core of the
2-core machine).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pld_ros.models.residual_actor import ResidualActor, ResidualActorConfig
from pld_ros.models.resnet10 import DEFAULT_WIDTHS, PAPER_WIDTHS, ResNet10Config
from pld_ros.models.success_classifier import SuccessClassifier, SuccessClassifierConfig, export_onnx
from pld_ros.policies.residual import OnnxRunner

VIEWS, SIZE = 2, 128
WARMUP = 50
GOAL_P99_MS = 15.0


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(run: Callable[[], object], iterations: int) -> np.ndarray:
    for _ in range(WARMUP):
        run()
    times = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        run()
        times[i] = time.perf_counter() - start
    return times * 1e3


def cases(widths: tuple[int, ...], threads: int, directory: Path) -> dict[str, Callable[[], object]]:
    encoder = ResNet10Config(widths=widths)
    actor = ResidualActor(ResidualActorConfig(encoder=encoder, num_views=VIEWS)).eval()
    classifier = SuccessClassifier(
        SuccessClassifierConfig(encoder=encoder, num_views=VIEWS, num_heads=2)
    ).eval()
    rng = np.random.default_rng(0)
    images_np = rng.integers(0, 256, (1, VIEWS, SIZE, SIZE, 3), dtype=np.uint8)
    images = torch.from_numpy(images_np)
    proprio, base = torch.zeros(1, 8), torch.zeros(1, 7)

    classifier_path = directory / f"classifier_{widths[0]}.onnx"
    export_onnx(classifier, classifier_path, views=VIEWS, height=SIZE, width=SIZE)
    classifier_onnx = session(classifier_path, threads)
    # The residual node's own path: the actor exported to ONNX in memory, sampled in numpy.
    actor_onnx = OnnxRunner(actor, (VIEWS, SIZE, SIZE, 3), threads=threads)
    images_one, proprio_one, base_one = images_np[0], proprio.numpy()[0], base.numpy()[0]

    def actor_torch() -> object:
        with torch.inference_mode():
            return actor.act(images, proprio, base, deterministic=False)

    def classifier_torch() -> object:
        with torch.inference_mode():
            return classifier(images)

    def actor_ort() -> object:
        return actor_onnx.distribution(images_one, proprio_one, base_one)

    def classifier_ort() -> object:
        return classifier_onnx.run(None, {"images": images_np})

    return {
        "actor torch": actor_torch,
        "actor onnx (node)": actor_ort,
        "classifier onnx": classifier_ort,
        "classifier torch": classifier_torch,
        "actor torch + classifier onnx": lambda: (actor_torch(), classifier_ort()),
        "actor onnx + classifier onnx": lambda: (actor_ort(), classifier_ort()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--widths", choices=("default", "paper", "both"), default="both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = {"default": [DEFAULT_WIDTHS], "paper": [PAPER_WIDTHS], "both": [DEFAULT_WIDTHS, PAPER_WIDTHS]}
    print(f"{VIEWS} views {SIZE}x{SIZE}, {args.iterations} iterations, {args.threads} thread(s)")
    print(f"{'widths':<22} {'case':<32} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    with tempfile.TemporaryDirectory() as directory:
        for widths in chosen[args.widths]:
            for name, run in cases(widths, args.threads, Path(directory)).items():
                times = measure(run, args.iterations)
                p50, p99 = np.percentile(times, [50, 99])
                goal = ""
                if "+" in name:
                    goal = (
                        "  meets the goal"
                        if p99 <= GOAL_P99_MS
                        else f"  misses the {GOAL_P99_MS:.0f} ms goal"
                    )
                print(f"{widths!s:<22} {name:<32} {p50:8.2f} {p99:8.2f} {times.max():8.2f}{goal}")


if __name__ == "__main__":
    main()
