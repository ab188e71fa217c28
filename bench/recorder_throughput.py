"""Recorder throughput: two 640x480 rgb8 cameras at 30 Hz and an arm state at 20 Hz into one bag.

Two processes, as on the robot: a publisher (this script with ``--role publish``: both cameras and
the state, from one node on timers) and the recorder node (``pld_ros.nodes.recorder``, one bag per
session, zstd chunks, the profile's defaults otherwise). The cameras publish as the camera node does
(best effort, depth 1, ``pld_ros.nodes.camera_publisher``); the state as the arm driver does
(``RobotState``, reliable, depth 10). Frames are smooth moving patterns with camera-like noise
(sigma 2), so zstd meets image-like data: neither flat (which compresses to nothing) nor random.
Fast DDS runs with config/fastdds_shm.xml (the project's path for images; ``--default-dds`` for
the middleware's defaults).

Reports, over the publishing window (after the recorder has subscribed to all three topics):
messages published vs written per topic (the difference is lost, in DDS or the recorder's queue;
the recorder's own count of queue drops is printed too), MB/s written (serialized, and on disk
after compression), and the recorder process's CPU use (user + system time of all its threads
over wall time; 100 % = one core).

    scripts/in_env.sh python bench/recorder_throughput.py --seconds 20

Runs in a DDS domain of its own on loopback, so it neither sees nor disturbs other graphs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHM_PROFILE = ROOT / "config" / "fastdds_shm.xml"
NAMESPACE = "/recorder_bench"
CAMERAS = ("wrist", "side")
CAMERA_FPS = 30.0
STATE_RATE = 20.0
WIDTH, HEIGHT = 640, 480
PATTERNS = 8
"""Distinct frames per camera, cycled (precomputed: making a noisy frame costs more than sending it)."""
PROFILE = """
name: recorder_bench
robot_id: bench_rig
recording: {{directory: "{bags}", split: session, compression: {compression}}}
"""


def camera_frames(seed: int) -> list[np.ndarray]:
    """Moving smooth patterns with Gaussian noise of sigma 2 (a camera's sensor noise)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, HEIGHT)[:, None]
    x = np.linspace(0.0, 1.0, WIDTH)[None, :]
    frames = []
    for index in range(PATTERNS):
        t = 0.3 * index + seed
        channels = [np.sin(2 * np.pi * (k * x + (3 - k) * y) + t * k) for k in (1, 2, 3)]
        smooth = 127.5 + 100.0 * np.stack(channels, axis=-1)
        frames.append(np.clip(smooth + rng.normal(0.0, 2.0, smooth.shape), 0, 255).astype(np.uint8))
    return frames


def publish(seconds: float) -> None:
    """The publisher process: waits for the recorder's subscriptions, publishes, prints its counts."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from pld_msgs.msg import RobotState
    from pld_ros.nodes.camera_publisher import SENSOR_QOS, image_message

    rclpy.init()
    node = Node("recorder_bench_publisher", namespace=NAMESPACE)
    frames = {camera: camera_frames(seed) for seed, camera in enumerate(CAMERAS)}
    cameras = {c: node.create_publisher(Image, f"cameras/{c}/image_raw", SENSOR_QOS) for c in CAMERAS}
    state_pub = node.create_publisher(RobotState, "arm/state", 10)
    counts = {f"{NAMESPACE}/cameras/{c}/image_raw": 0 for c in CAMERAS} | {f"{NAMESPACE}/arm/state": 0}
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    while any(p.get_subscription_count() == 0 for p in (*cameras.values(), state_pub)):
        executor.spin_once(timeout_sec=0.1)
    print("publishing", flush=True)
    time.sleep(1.0)  # the recorder's side of the match

    def camera_tick(camera: str) -> Any:
        topic = f"{NAMESPACE}/cameras/{camera}/image_raw"

        def tick() -> None:
            stamp = node.get_clock().now().to_msg()
            cameras[camera].publish(image_message(frames[camera][counts[topic] % PATTERNS], stamp, camera))
            counts[topic] += 1

        return tick

    def state_tick() -> None:
        message = RobotState(mode=RobotState.MODE_MOVING)
        message.header.stamp = node.get_clock().now().to_msg()
        message.joints.position = [0.1 * counts[f"{NAMESPACE}/arm/state"]] * 7
        state_pub.publish(message)
        counts[f"{NAMESPACE}/arm/state"] += 1

    for camera in CAMERAS:
        node.create_timer(1.0 / CAMERA_FPS, camera_tick(camera))
    node.create_timer(1.0 / STATE_RATE, state_tick)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        executor.spin_once(timeout_sec=0.05)
    elapsed = time.monotonic() - start
    executor.shutdown()
    node.destroy_node()
    rclpy.shutdown()
    print(json.dumps({"seconds": elapsed, "counts": counts}), flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system time of every thread of ``pid`` so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="publishing time")
    parser.add_argument("--compression", choices=("zstd", "none"), default="zstd")
    parser.add_argument(
        "--default-dds", action="store_true", help="Fast DDS defaults, not config/fastdds_shm.xml"
    )
    parser.add_argument("--role", choices=("main", "publish"), default="main", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "publish":
        publish(args.seconds)
        return

    env = dict(os.environ)
    env.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randrange(100, 200)))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    if not args.default_dds:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(SHM_PROFILE)
    with tempfile.TemporaryDirectory(prefix="recorder_bench_") as tmp:
        bags = Path(tmp) / "bags"
        profile = Path(tmp) / "recorder_bench.yaml"
        profile.write_text(PROFILE.format(bags=bags, compression=args.compression))
        topics = [f"cameras/{c}/image_raw" for c in CAMERAS] + ["arm/state"]
        recorder = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pld_ros.nodes.recorder",
                "--ros-args",
                "-r",
                f"__ns:={NAMESPACE}",
                "-p",
                f"profile:={profile}",
                "-p",
                f"topics:={topics!r}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        me = [sys.executable, str(Path(__file__).resolve())]
        publisher = subprocess.Popen(
            [*me, "--role", "publish", "--seconds", str(args.seconds)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert publisher.stdout is not None and recorder.stdout is not None
        assert publisher.stdout.readline().strip() == "publishing", "the publisher did not start"
        time.sleep(1.0)
        cpu0, wall0 = cpu_seconds(recorder.pid), time.monotonic()
        output, _ = publisher.communicate(timeout=args.seconds + 60)
        cpu1, wall1 = cpu_seconds(recorder.pid), time.monotonic()
        time.sleep(1.0)  # the last messages reach the queue
        recorder.send_signal(signal.SIGINT)
        log, _ = recorder.communicate(timeout=120)
        result = json.loads(output.strip().splitlines()[-1])

        from pld_ros.data.bags import bag_info

        (bag,) = bags.iterdir()
        info = bag_info(bag)
    written = {t.name: t.count for t in info.topics}
    seconds = result["seconds"]
    dropped_in_queue = re.search(r"dropped (\d+) \(queue full\)", log)
    print(
        f"recorder throughput: 2 cameras {WIDTH}x{HEIGHT} rgb8 at {CAMERA_FPS:g} Hz + RobotState at "
        f"{STATE_RATE:g} Hz for {seconds:.1f} s, compression {args.compression}, "
        f"{'default Fast DDS' if args.default_dds else 'Fast DDS with config/fastdds_shm.xml'}"
    )
    print(f"{'topic':40s} {'published':>9s} {'written':>8s} {'lost':>6s} {'rate Hz':>8s}")
    for topic, published in result["counts"].items():
        count = written.get(topic, 0)
        print(f"{topic:40s} {published:9d} {count:8d} {published - count:6d} {published / seconds:8.1f}")
    image_bytes = WIDTH * HEIGHT * 3
    serialized = sum(written.get(f"{NAMESPACE}/cameras/{c}/image_raw", 0) for c in CAMERAS) * image_bytes
    print(f"queue drops reported by the recorder: {dropped_in_queue.group(1) if dropped_in_queue else '?'}")
    print(
        f"written: {serialized / 1e6 / info.duration_ns * 1e9:.1f} MB/s of images (serialized), "
        f"{info.size_bytes / 1e6 / (info.duration_ns * 1e-9):.1f} MB/s on disk "
        f"({info.size_bytes / 1e6:.0f} MB, {info.size_bytes / max(serialized, 1):.2f} of the serialized size)"
    )
    print(f"recorder CPU: {100.0 * (cpu1 - cpu0) / (wall1 - wall0):.0f} % of one core (user + system)")


if __name__ == "__main__":
    main()
