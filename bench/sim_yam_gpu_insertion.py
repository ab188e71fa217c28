"""Cost and reliability of the simulated yam_gpu_insertion world with its scripted expert.

Runs full 4-stage cycles as fast as they compute: the expert's deltas go through the profile's
safety filter to the I2rtArmBackend on the i2rt SimRobot, the world follows the arm, and both
cameras render every tick (unless ``--no-render``). With ``--drop-rate`` the card is dropped from
the fingers at random ticks. Printed: cycles completed, ticks per cycle, milliseconds per tick of
IK, state read, world update, expert and each camera (median and 95th percentile), peak memory.

    scripts/in_env.sh python -m bench.sim_yam_gpu_insertion [--cycles 3] [--size 128]
        [--drop-rate 0.0] [--no-render]
"""

from __future__ import annotations

import argparse
import resource
import time
from collections import defaultdict

import numpy as np

from pld_ros.core.safety import SafetyFilter
from pld_ros.drivers.i2rt_arm import I2rtArmBackend
from pld_ros.profile import I2rtArm, load_profile
from pld_ros.sim.yam_gpu_insertion import READY_JOINTS, STAGES, YamGpuInsertionWorld
from pld_ros.sim.yam_gpu_insertion_expert import YamGpuInsertionExpert

STAGE_TICKS = 800
"""A stage not done within this many ticks (40 s at 20 Hz, the profile's timeouts) fails."""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--size", type=int, default=128, help="square render size, pixels")
    parser.add_argument("--drop-rate", type=float, default=0.0, help="chance per tick of a drop")
    parser.add_argument("--no-render", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    profile = load_profile("yam_gpu_insertion", sim=True)
    config = profile.arms["left"]
    assert isinstance(config, I2rtArm)
    arm = I2rtArmBackend(config, sim=True, joint_speed=4.0)
    arm.connect()
    world = YamGpuInsertionWorld(
        arm.model_path, render_width=args.size, render_height=args.size, seed=args.seed
    )
    expert = YamGpuInsertionExpert(world)
    safety = SafetyFilter(config.safety)
    rng = np.random.default_rng(args.seed)
    seconds: dict[str, list[float]] = defaultdict(list)
    cycle_ticks: list[int] = []
    drops = 0

    def timed(name: str, began: float) -> float:
        now = time.perf_counter()
        seconds[name].append(now - began)
        return now

    for _ in range(args.cycles):
        arm.move_joints(READY_JOINTS)
        world.reset_scene()
        state = arm.read_state()
        safety.reset(state.ee_pose, state.gripper_closure)
        ticks = 0
        for stage in STAGES:
            streak = 0
            for _ in range(STAGE_TICKS):
                began = time.perf_counter()
                state = arm.read_state()
                began = timed("read_state", began)
                world.update(state.joint_positions, state.gripper_closure)
                began = timed("world.update", began)
                if not args.no_render:
                    for camera in world.camera_names:
                        world.render(camera)
                        began = timed(f"render {camera}", began)
                ticks += 1
                if world.attached and rng.random() < args.drop_rate:
                    drops += world.drop_part()
                streak = streak + 1 if world.signals().of(stage) else 0
                if streak >= 3:
                    break
                began = time.perf_counter()
                command = expert.act(stage, state.ee_pose, state.gripper_closure)
                timed("expert.act", began)
                output = safety.step(command, state.ee_pose)
                arm.command(output.target, output.gripper)
                assert arm.last_ik is not None
                seconds["IK"].append(arm.last_ik.seconds)
            if streak < 3:
                print(f"cycle failed in {stage}: card at {world.part_pose.position.round(3)}")
                break
        else:
            cycle_ticks.append(ticks)

    print(f"{len(cycle_ticks)} of {args.cycles} cycles completed, {drops} drops injected")
    if cycle_ticks:
        print(f"ticks per cycle: median {np.median(cycle_ticks):.0f}, max {max(cycle_ticks)}")
    for name, values in seconds.items():
        median, p95 = np.median(values) * 1e3, np.percentile(values, 95) * 1e3
        print(f"{name:>16}: median {median:6.2f} ms, p95 {p95:6.2f} ms")
    print(f"safety clips: {sum(safety.counters.values())}")
    print(f"peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    world.close()
    arm.close()


if __name__ == "__main__":
    main()
