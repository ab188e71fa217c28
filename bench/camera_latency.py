"""Camera-to-subscriber latency of two cameras across processes: naive images vs policy views.

Three processes, as on the robot: one publisher per camera (wrist, side) and one subscriber (the
policy). Each publisher "captures" a 640x480 frame at 30 Hz and stamps it with the capture time;
the subscriber takes receive time minus stamp, on the same host clock. Variants:

- ``baseline``: rclpy publishes the full sensor_msgs/Image (rgb8, 900 KB) with default QoS and
  default Fast DDS transports (the naive setup the issue measured).
- ``policy_rt``: the project's path. pld_ros.nodes.camera_publisher.CameraPublisher crops and
  resizes to the 128x128 policy view (48 KB; timed too) and publishes it best effort; Fast DDS runs
  with config/fastdds_shm.xml (shared memory on the host, UDP across hosts); the camera and policy
  processes run under SCHED_FIFO (the camera node's ``realtime_priority``), so that load from other
  processes (simulations, training) does not delay them.
- ``policy`` (no SCHED_FIFO), ``policy_default_dds`` (nor the Fast DDS profile) and
  ``baseline_shm`` (the baseline with the profile): one change at a time, to see what each buys.

The machine is shared (and has 2 cores), so the variants run interleaved, in rounds of
``--round-seconds``, and pooled: a burst of load from elsewhere hits all of them alike.
Goal (issue "hardware layer"): policy-view p99 (``policy_rt``) at least 10x below the baseline's.

    scripts/in_env.sh python bench/camera_latency.py --seconds 30

Runs in a DDS domain of its own on loopback, so it neither sees nor disturbs other graphs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHM_PROFILE = ROOT / "config" / "fastdds_shm.xml"
CAMERAS = ("wrist", "side")
WARMUP = 2.0
"""s of samples dropped at the start of a run: discovery and first-message allocations."""
REALTIME_PRIORITY = 10
"""SCHED_FIFO priority of the processes of the ``policy_rt`` variant (needs root or an rtprio limit)."""
VARIANTS = {
    # name: (what is published, Fast DDS profile file or None for the defaults, SCHED_FIFO priority)
    "baseline": ("image", None, 0),
    "baseline_shm": ("image", SHM_PROFILE, 0),
    "policy_default_dds": ("policy_view", None, 0),
    "policy": ("policy_view", SHM_PROFILE, 0),
    "policy_rt": ("policy_view", SHM_PROFILE, REALTIME_PRIORITY),
}


def camera_profile(width: int, height: int, fps: int) -> Any:
    from pld_ros.profile import Camera, PolicyView

    # The shipped profiles' view: the centred square, resized to 128x128.
    side = min(width, height)
    crop = ((width - side) // 2, (height - side) // 2, side, side)
    return Camera(
        driver="opencv", source="0", width=width, height=height, fps=fps, policy_view=PolicyView(crop=crop)
    )


def publish(camera: str, payload: str, width: int, height: int, fps: int, seconds: float) -> None:
    """A camera process: one frame every 1/fps s, stamped when it is captured."""
    import rclpy
    from rclpy.node import Node
    from rclpy.time import Time
    from sensor_msgs.msg import Image

    from pld_ros.nodes.camera_publisher import CameraPublisher, image_message

    rclpy.init()
    node = Node(f"{camera}_camera")
    frames = [np.random.default_rng(i).integers(0, 256, (height, width, 3), dtype=np.uint8) for i in range(4)]
    views = CameraPublisher(
        node, camera, camera_profile(width, height, fps), (600.0, 600.0, width / 2, height / 2)
    )
    raw = node.create_publisher(Image, f"bench/{camera}/image", 10)
    count = 0

    def capture() -> None:
        nonlocal count
        frame = frames[count % len(frames)]
        count += 1
        stamp = Time(nanoseconds=time.time_ns()).to_msg()
        if payload == "policy_view":
            views.publish(frame, stamp)
        else:
            raw.publish(image_message(frame, stamp, f"{camera}_camera_optical_frame"))

    node.create_timer(1.0 / fps, capture)
    end = time.monotonic() + seconds
    while rclpy.ok() and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_node()
    rclpy.shutdown()


def subscribe(payload: str, seconds: float) -> None:
    """The policy process: the latency of every message, printed as JSON when done."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from pld_ros.nodes.camera_publisher import SENSOR_QOS

    rclpy.init()
    node = Node("policy_bench")
    latencies: dict[str, list[float]] = {camera: [] for camera in CAMERAS}
    start = time.monotonic()

    def receiver(camera: str) -> Any:
        def receive(msg: Any) -> None:
            now = time.time_ns()
            if time.monotonic() - start > WARMUP:
                latencies[camera].append(
                    (now - msg.header.stamp.sec * 10**9 - msg.header.stamp.nanosec) * 1e-9
                )

        return receive

    for camera in CAMERAS:
        if payload == "policy_view":
            node.create_subscription(Image, f"cameras/{camera}/policy_view", receiver(camera), SENSOR_QOS)
        else:
            node.create_subscription(Image, f"bench/{camera}/image", receiver(camera), 10)
    # What run_node does (rclpy.spin): the single-threaded executor.
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    print("ready", flush=True)
    end = start + seconds
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.1)
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown()
    print(json.dumps(latencies), flush=True)


def run(variant: str, seconds: float, args: argparse.Namespace) -> dict[str, list[float]]:
    """Start the two cameras and the subscriber for one variant; return the latencies (s) by camera."""
    payload, dds_profile, priority = VARIANTS[variant]
    env = dict(os.environ)
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    if dds_profile is not None:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(dds_profile)
    me = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--payload",
        payload,
        "--seconds",
        str(seconds + WARMUP),
        "--realtime-priority",
        str(priority),
    ]
    subscriber = subprocess.Popen(
        [*me, "--role", "subscribe"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert subscriber.stdout is not None
    subscriber.stdout.readline()  # "ready"
    size = ["--width", str(args.width), "--height", str(args.height), "--fps", str(args.fps)]
    cameras = [subprocess.Popen([*me, "--role", "publish", "--camera", c, *size], env=env) for c in CAMERAS]
    output, _ = subscriber.communicate(timeout=seconds + WARMUP + 60)
    for camera in cameras:
        camera.wait(timeout=30)
    latencies: dict[str, list[float]] = json.loads(output.strip().splitlines()[-1])
    return latencies


def merged(by_camera: dict[str, list[float]]) -> list[float]:
    return [sample for camera in CAMERAS for sample in by_camera[camera]]


def percentiles(samples: list[float]) -> tuple[float, float, float, float]:
    """p50, p90, p99 and max, ms."""
    ms = np.asarray(samples) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return float(p50), float(p90), float(p99), float(ms.max())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="measured time per variant (after warm-up)"
    )
    parser.add_argument("--round-seconds", type=float, default=10.0, help="length of one interleaved run")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument(
        "--role", choices=("main", "publish", "subscribe"), default="main", help=argparse.SUPPRESS
    )
    parser.add_argument("--camera", choices=CAMERAS, help=argparse.SUPPRESS)
    parser.add_argument("--payload", choices=("image", "policy_view"), help=argparse.SUPPRESS)
    parser.add_argument("--realtime-priority", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.realtime_priority:
        # Before rclpy starts: the DDS threads inherit the policy of the thread that creates them.
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(args.realtime_priority))

    if args.role == "publish":
        publish(args.camera, args.payload, args.width, args.height, args.fps, args.seconds)
        return
    if args.role == "subscribe":
        subscribe(args.payload, args.seconds)
        return

    os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randrange(100, 200)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    rounds = max(1, math.ceil(args.seconds / args.round_seconds))
    print(
        f"camera -> subscriber latency: 2 cameras x {args.width}x{args.height} rgb8 at {args.fps} Hz, "
        f"3 processes, {rounds} interleaved round(s) of {args.seconds / rounds:g} s per variant"
    )
    pooled: dict[str, dict[str, list[float]]] = {v: {c: [] for c in CAMERAS} for v in args.variants}
    round_p99: dict[str, list[float]] = {v: [] for v in args.variants}
    for _ in range(rounds):
        for variant in args.variants:
            latencies = run(variant, args.seconds / rounds, args)
            for camera in CAMERAS:
                pooled[variant][camera] += latencies[camera]
            both = merged(latencies)
            round_p99[variant].append(percentiles(both)[2] if both else math.nan)
    print(
        f"{'variant':20s} {'camera':6s} {'p50':>7s} {'p90':>7s} {'p99':>7s} {'max':>8s} {'count':>6s}  (ms)"
    )
    for variant in args.variants:
        for camera in (*CAMERAS, "both"):
            samples = pooled[variant][camera] if camera != "both" else merged(pooled[variant])
            if not samples:
                print(f"{variant:20s} {camera:6s} no samples")
                continue
            p50, p90, p99, top = percentiles(samples)
            print(f"{variant:20s} {camera:6s} {p50:7.2f} {p90:7.2f} {p99:7.2f} {top:8.2f} {len(samples):6d}")
        print(f"{'':20s} p99 by round: {', '.join(f'{p:.2f}' for p in round_p99[variant])}")
    if "baseline" in args.variants and merged(pooled["baseline"]):
        baseline = percentiles(merged(pooled["baseline"]))[2]
        for variant in args.variants:
            if variant != "baseline" and merged(pooled[variant]):
                print(f"p99 baseline / {variant}: {baseline / percentiles(merged(pooled[variant]))[2]:.1f}x")
        print("goal: p99 of the project's path (policy_rt) at least 10x below the baseline's")


if __name__ == "__main__":
    main()
