"""Soak of the YAM GPU-insertion loop through the whole simulated ROS graph, in real time.

Starts ``pld launch yam_gpu_insertion --sim`` (every node its own process, DDS between them:
the world with its cameras and the scripted expert served over openpi, two i2rt sim arm drivers,
base policy, residual, privileged reward, replay buffer, supervisor with one episode per stage)
for ``--minutes``, and injects failures through ``sim/inject_fault`` at random times (exponential
gaps with the given means): drops of the held card, and stalls of the stand-in policy (its stage
then times out). At the end the graph is stopped and the run's loop statistics are printed and
plotted (``pld runs loop``).

    scripts/in_env.sh python -m bench.yam_graph_soak [--minutes 30] [--drop-every 45]
        [--stall-every 120] [--seed 0] [--out out/yam_graph_soak]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import rclpy

from bench.soak import (
    add_common_arguments,
    fresh_directory,
    launched_graph,
    print_loop_report,
    write_overlay_profile,
)
from pld_msgs.srv import InjectFault
from pld_ros.core.episode_log import read_episodes
from pld_ros.profile import default_config_dir


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser, minutes=30.0, out="out/yam_graph_soak")
    parser.add_argument("--drop-every", type=float, default=45.0, help="mean seconds between drops")
    parser.add_argument("--stall-every", type=float, default=120.0, help="mean seconds between stalls")
    args = parser.parse_args()
    out = fresh_directory(args.out)
    profile = write_overlay_profile(
        out,
        default_config_dir() / "yam_gpu_insertion_sim.yaml",
        {"supervisor": {"run_directory": str(out / "runs")}, "buffer": {"directory": str(out / "episodes")}},
    )
    rng = np.random.default_rng(args.seed)
    rclpy.init()
    node = rclpy.create_node("yam_graph_soak")
    client: Any = node.create_client(InjectFault, "/sim/inject_fault")
    injected = {"drop": 0, "stall": 0}
    refused = {"drop": 0, "stall": 0}
    due = {"drop": rng.exponential(args.drop_every), "stall": rng.exponential(args.stall_every)}
    started = time.monotonic()
    with launched_graph(profile, args.minutes, out / "graph.log") as graph:
        try:
            while graph.poll() is None:
                rclpy.spin_once(node, timeout_sec=0.2)
                elapsed = time.monotonic() - started
                for fault, at in due.items():
                    if elapsed < at or not client.service_is_ready():
                        continue
                    future = client.call_async(InjectFault.Request(fault=fault))
                    rclpy.spin_until_future_complete(node, future, timeout_sec=5.0)
                    answer = future.result()
                    if answer is not None and answer.success:
                        injected[fault] += 1
                        print(f"{elapsed / 60.0:6.2f} min  {answer.message}", flush=True)
                        mean = args.drop_every if fault == "drop" else args.stall_every
                        due[fault] = elapsed + rng.exponential(mean)
                    else:
                        # Nothing to drop right now (the card is not held): try again shortly.
                        refused[fault] += 1
                        due[fault] = elapsed + 0.5
        except KeyboardInterrupt:
            pass
    node.destroy_node()
    rclpy.shutdown()
    [run_dir] = (out / "runs").iterdir()
    print(
        f"graph exited with {graph.returncode}; "
        f"injected: {injected['drop']} drops, {injected['stall']} stalls "
        f"({refused['drop']} drop attempts found nothing held, {refused['stall']} stalls nothing asked)"
    )
    plot = print_loop_report(read_episodes(run_dir), out)
    print(f"episode log: {run_dir / 'episodes.jsonl'}\nplot: {plot}\ngraph log: {out / 'graph.log'}")


if __name__ == "__main__":
    main()
