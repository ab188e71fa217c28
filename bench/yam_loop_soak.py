"""Soak of the YAM GPU-insertion loop: simulated minutes of unattended operation with injected
failures, then the loop's statistics printed and plotted.

Runs :func:`pld_ros.sim.yam_loop.run_yam_loop` (the profile's supervisor, stage machine, safety
filter, the i2rt sim arm and the simulated world; the expert and the privileged stage signals
stand in for the VLA and the classifier) on simulated time, writes the episode log and
``loop.png`` into ``--out`` and prints the ``pld runs loop`` table.

    scripts/in_env.sh python -m bench.yam_loop_soak [--minutes 30] [--drop-rate 0.003]
        [--stall-rate 0.03] [--knock-at MINUTES...] [--seed 0] [--out out/yam_loop]
"""

from __future__ import annotations

import argparse

from bench.soak import add_common_arguments, fresh_directory, print_loop_report
from pld_ros.profile import load_profile
from pld_ros.sim.yam_loop import LoopFaults, run_yam_loop


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(parser, minutes=30.0, out="out/yam_loop")
    parser.add_argument("--drop-rate", type=float, default=0.003, help="chance per held tick of a drop")
    parser.add_argument("--stall-rate", type=float, default=0.03, help="chance per stage attempt of a stall")
    parser.add_argument("--knock-at", type=float, nargs="*", default=[], help="minutes of knock-overs")
    parser.add_argument("--profile", default="yam_gpu_insertion", help="its simulated variant runs")
    args = parser.parse_args()

    out = fresh_directory(args.out)
    knocks = tuple(60.0 * minute for minute in args.knock_at)
    faults = LoopFaults(drop_rate=args.drop_rate, stall_rate=args.stall_rate, knock_times=knocks)
    report = run_yam_loop(load_profile(args.profile, sim=True), args.minutes, out, faults, seed=args.seed)
    injected = ", ".join(f"{count} {name}" for name, count in report.injected.items())
    print(f"{args.minutes:g} simulated minutes ({report.ticks} ticks) in {report.compute_s:.1f} s")
    print(f"injected: {injected}")
    plot = print_loop_report(report.records, out)
    print(f"episode log: {out / 'episodes.jsonl'}\nplot: {plot}")


if __name__ == "__main__":
    main()
