"""Command line of the robosuite Lift benchmark: collect demonstrations, train the BC base policy,
evaluate a policy. Run in the benchmark's venv (``scripts/bootstrap_robosuite.sh``)::

    scripts/in_robosuite_env.sh python -m bench.robosuite_lift.run collect [--episodes 40] [--seed 0]
    scripts/in_robosuite_env.sh python -m bench.robosuite_lift.run train-bc [--max-demos 10]
    scripts/in_robosuite_env.sh python -m bench.robosuite_lift.run evaluate --policy base \\
        [--episodes 50] [--seed 1000]

Demonstration seeds start at 0 and evaluation seeds at 1000 by default, so evaluation runs on
initial states the base policy was not trained on. The RL methods plug in as an
:data:`~bench.robosuite_lift.rollout.ActFn` given to :func:`~bench.robosuite_lift.rollout.evaluate`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .bc import BCConfig, Demos, load_policy, save_policy, train_bc
from .env import LiftConfig, LiftEnv
from .expert import ExpertConfig, ScriptedExpert
from .rollout import ActFn, evaluate, executing_base, run_episode

OUT = Path("out/robosuite_lift")
DEMOS = OUT / "demos.npz"
BASE_POLICY = OUT / "bc_policy.safetensors"
EVAL_SEED = 1000
"""First evaluation seed: far from the demonstrations' (0, 1, ...)."""
DEMO_ACTION_NOISE = 0.15
"""The demonstrations' per-step action noise (see :class:`ExpertConfig`)."""
DEMO_GRASP_OFFSET = 0.008
"""The demonstrations' per-episode grasp offset, m (see :class:`ExpertConfig`)."""


def collect(args: argparse.Namespace) -> None:
    env = LiftEnv(LiftConfig(horizon=args.horizon))
    config = ExpertConfig(action_noise_std=args.action_noise, grasp_offset_std=args.grasp_offset)
    expert = ScriptedExpert(config, np.random.default_rng(args.seed))
    act = executing_base(expert.act)
    records = [run_episode(env, act, args.seed + i) for i in range(args.episodes)]
    demos = Demos.from_records(records)
    demos.save(args.out)
    print(
        f"wrote {args.out}: {len(records)} episodes ({int(demos.successes.sum())} successful), "
        f"{len(demos.states)} steps"
    )


def train(args: argparse.Namespace) -> None:
    config = BCConfig(
        max_demos=args.max_demos, epochs=args.epochs, seed=args.seed, hidden_dim=args.hidden_dim
    )
    model, losses = train_bc(Demos.load(args.demos), config, log=print)
    save_policy(model, args.out)
    print(f"wrote {args.out} (final loss {losses[-1]:.4f})")


def policy_fn(args: argparse.Namespace) -> ActFn:
    if args.policy == "base":
        return executing_base(load_policy(args.weights).act)
    config = ExpertConfig(action_noise_std=args.action_noise, grasp_offset_std=args.grasp_offset)
    return executing_base(ScriptedExpert(config, np.random.default_rng(args.seed)).act)


def evaluate_command(args: argparse.Namespace) -> None:
    env = LiftEnv(LiftConfig(horizon=args.horizon, images=args.images))
    result = evaluate(policy_fn(args), env, args.episodes, args.seed)
    print(f"{args.policy}, seeds {args.seed}..{args.seed + args.episodes - 1}: {result.summary()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.robosuite_lift.run", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    horizon = LiftConfig().horizon

    def noise_options(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--action-noise", type=float, default=DEMO_ACTION_NOISE, help="expert action noise"
        )
        command.add_argument(
            "--grasp-offset", type=float, default=DEMO_GRASP_OFFSET, help="expert grasp offset std, m"
        )

    c = commands.add_parser("collect", help="record noisy scripted demonstrations")
    c.add_argument("--episodes", type=int, default=40)
    c.add_argument("--seed", type=int, default=0, help="first reset seed (and the noise's seed)")
    c.add_argument("--horizon", type=int, default=horizon)
    c.add_argument("--out", type=Path, default=DEMOS)
    noise_options(c)
    c.set_defaults(run=collect)

    t = commands.add_parser("train-bc", help="train the BC base policy on the successful demonstrations")
    t.add_argument("--demos", type=Path, default=DEMOS)
    t.add_argument("--out", type=Path, default=BASE_POLICY)
    defaults = BCConfig()
    t.add_argument("--max-demos", type=int, default=defaults.max_demos)
    t.add_argument("--epochs", type=int, default=defaults.epochs)
    t.add_argument("--hidden-dim", type=int, default=defaults.hidden_dim)
    t.add_argument("--seed", type=int, default=defaults.seed)
    t.set_defaults(run=train)

    e = commands.add_parser("evaluate", help="success rate and episode length of a policy")
    e.add_argument("--policy", choices=["base", "expert"], default="base")
    e.add_argument("--weights", type=Path, default=BASE_POLICY, help="the base policy's weights")
    e.add_argument("--episodes", type=int, default=50)
    e.add_argument("--seed", type=int, default=EVAL_SEED, help="first reset seed")
    e.add_argument("--horizon", type=int, default=horizon)
    e.add_argument("--images", action="store_true", help="also render the two cameras (for timing)")
    noise_options(e)
    e.set_defaults(run=evaluate_command)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
