"""Cost of the simulated franka_pick_cube world: physics pace, render time, CPU.

The world runs in this process; franky drives its arm the way the arm driver does (a 20 Hz stream
of asynchronous absolute Cartesian targets, here a 5 cm circle) while every camera renders at
``--fps``. Printed: the physics real-time factor, render milliseconds per view (median and 95th
percentile), and CPU time per wall-clock second of the physics thread and of the whole process
(which here also holds franky's 1 kHz client, in its own process in the real graph).

    scripts/in_env.sh python -m bench.sim_franka_pick_cube [--seconds 20] [--fps 30] [--size 128]
        [--detailed-arm] [--idle]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import threading
import time

import franky
import numpy as np

from pld_ros.sim.franka_pick_cube import CAMERAS, PHYSICS_THREAD, FrankaPickCubeWorld

CONTROL_RATE = 20.0


def thread_cpu_seconds(native_id: int) -> float:
    """User + system CPU seconds of one thread of this process (Linux)."""
    with open(f"/proc/self/task/{native_id}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.29", help="loopback address for franky-sim")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fps", type=float, default=30.0, help="renders per second of each camera; 0: none")
    parser.add_argument("--size", type=int, default=128, help="square render size, pixels")
    parser.add_argument("--detailed-arm", action="store_true", help="render the full visual meshes")
    parser.add_argument("--idle", action="store_true", help="no franky client, no motion")
    args = parser.parse_args()

    world = FrankaPickCubeWorld(
        args.host, render_width=args.size, render_height=args.size, detailed_arm=args.detailed_arm
    )
    with world:
        robot = None
        if not args.idle:
            robot = franky.Robot(args.host, realtime_config=franky.RealtimeConfig.Ignore)
            robot.relative_dynamics_factor = 0.3
            start_pose = robot.current_cartesian_state.pose.end_effector_pose
            centre = np.add(start_pose.translation, (0.1, 0.0, -0.15))
            orientation = list(start_pose.quaternion)
        [physics_thread] = [t.native_id for t in threading.enumerate() if t.name == PHYSICS_THREAD]
        assert physics_thread is not None
        render_ms: dict[str, list[float]] = {name: [] for name in CAMERAS}
        world.real_time_factor()
        wall0, cpu0, physics0 = time.monotonic(), process_cpu_seconds(), thread_cpu_seconds(physics_thread)
        end = wall0 + args.seconds
        next_render = wall0 if args.fps > 0 else math.inf
        next_control = wall0 if robot is not None else math.inf
        while (now := time.monotonic()) < end:
            if now >= next_render:
                for name in CAMERAS:
                    t = time.perf_counter()
                    world.render(name)
                    render_ms[name].append(1e3 * (time.perf_counter() - t))
                next_render += 1.0 / args.fps
            if robot is not None and now >= next_control:
                angle = 2 * math.pi * 0.25 * (now - wall0)
                target = centre + 0.05 * np.array([math.cos(angle), math.sin(angle), 0.0])
                motion = franky.CartesianMotion(franky.Affine(list(target), orientation))
                robot.move(motion, asynchronous=True)
                next_control += 1.0 / CONTROL_RATE
            time.sleep(max(0.0, min(next_render, next_control, end) - time.monotonic()))
        wall = time.monotonic() - wall0
        rtf = world.real_time_factor()
        physics_cpu = (thread_cpu_seconds(physics_thread) - physics0) / wall
        process_cpu = (process_cpu_seconds() - cpu0) / wall
        if robot is not None:
            robot.stop()

    print(
        f"franka_pick_cube: {args.seconds:.0f} s, {'idle' if args.idle else 'franky streaming at 20 Hz'}, "
        f"{len(CAMERAS)} cameras at {args.fps:g} fps, {args.size}x{args.size}, "
        f"{'detailed' if args.detailed_arm else 'collision-mesh'} arm"
    )
    print(f"  physics real-time factor  {rtf:.2f}")
    for name, samples in render_ms.items() if args.fps > 0 else ():
        median, p95 = np.percentile(samples, [50, 95])
        print(f"  render {name:<6} median {median:5.1f} ms  p95 {p95:5.1f} ms  ({len(samples)} frames)")
    print(f"  CPU  physics thread {physics_cpu:.2f} cores, whole process {process_cpu:.2f} cores")


if __name__ == "__main__":
    main()
