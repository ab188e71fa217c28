"""A look inside one learning run of the comparison: what the critic thinks of residuals and how
far the actor moves from zero, every 10 episodes after the warm-up.

On 256 transitions sampled from the online buffer (seed 1): the mean of min(Q1, Q2) at the zero
residual, at the actor's deterministic residual and at 16 uniform random residuals, the spread of
Q across those random residuals, the mean and largest |residual| of the actor, the temperature.
Then the usual final evaluation. Trainer overrides as in ``compare.py``::

    R="scripts/in_robosuite_env.sh python -m bench.robosuite_lift.probe"
    $R --steps 7000 --calql-steps 500 --trainer '{"cql_alpha": 0.5}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pld_ros.learning.learner import Learner

from .compare import RunConfig, run
from .run import BASE_POLICY

RANDOM_RESIDUALS = 16


def critic_probe(learner: Learner) -> str:
    """One line on the critic's values and the actor's residual (see the module docstring)."""
    buffer = learner.online if len(learner.online) else learner.offline
    batch = buffer.sample(256, np.random.default_rng(1))
    sac = learner.sac
    with torch.no_grad():
        features = sac.critic.features(None, batch.state)
        mean_residual = sac.actor.act(None, batch.state, batch.base_action, True)

        def q(residual: torch.Tensor) -> torch.Tensor:
            values: torch.Tensor = sac.critic.q_values(features, batch.base_action, residual).min(0).values
            return values

        random = torch.stack([q(torch.rand_like(mean_residual) * 2.0 - 1.0) for _ in range(RANDOM_RESIDUALS)])
        zero, mean = q(torch.zeros_like(mean_residual)).mean(), q(mean_residual).mean()
    return (
        f"|r| mean {mean_residual.abs().mean():.3f} max {mean_residual.abs().max():.3f}; "
        f"Q(r=0) {zero:.3f}, Q(actor) {mean:.3f}, Q(random) {random.mean():.3f} "
        f"(spread over residuals {random.std(0).mean():.3f}); temperature {sac.temperature:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.robosuite_lift.probe", description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=7000)
    parser.add_argument("--calql-steps", type=int, default=500)
    parser.add_argument("--xi", type=float, default=0.5)
    parser.add_argument("--trainer", type=json.loads, default={}, help="JSON object of Trainer overrides")
    parser.add_argument("--base", type=Path, default=BASE_POLICY)
    parser.add_argument("--raw-state", action="store_true", help="give the learner the unstandardized state")
    args = parser.parse_args()
    config = RunConfig(
        method="pld",
        seed=args.seed,
        steps=args.steps,
        xi=args.xi,
        calql_steps=args.calql_steps,
        eval_every=args.steps,
        trainer=args.trainer,
        standardize_state=not args.raw_state,
    )

    def report(learner: Learner, episodes: int, steps: int) -> None:
        if episodes >= config.warmup and episodes % 10 == 0:
            print(f"{steps} steps, {learner.sac.updates} updates: {critic_probe(learner)}", flush=True)

    run(config, args.base, after_episode=report)


if __name__ == "__main__":
    main()
