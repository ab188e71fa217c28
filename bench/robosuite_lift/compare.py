"""PLD against its ablations on robosuite Lift, same seeds and budget, no ROS in the loop.

Methods (all share the BC base policy, the warm-up episodes and the evaluation seeds):

- ``base``: the BC base policy alone.
- ``pld``: the residual on top of the base policy (``base + xi * residual``), RLPD symmetric
  sampling, Cal-QL pretraining on the warm-up's successes; the core learner of the robot's trainer
  (:class:`pld_ros.learning.learner.Learner`).
- ``pld_no_calql``: the same without the Cal-QL pretraining.
- ``rlpd``: no residual: the actor outputs the whole action (base action zero, ``xi`` 1), the same
  offline data (the warm-up's successes with their executed actions).

A run: ``warmup`` episodes with the base policy alone fill the buffers (successes offline,
failures online, as on the robot), then episodes with the learner's stochastic policy, learning
``updates_per_step`` updates per transition after each episode, until ``steps`` environment
steps (warm-up included). Every ``eval_every`` steps the deterministic policy is evaluated on
``eval_episodes`` fixed held-out seeds. One JSON file per method and seed; ``table`` aggregates
them (mean and spread over seeds, and the steps each method needs to reach 90 %)::

    R="scripts/in_robosuite_env.sh python -m bench.robosuite_lift.compare"
    $R run --method pld --seed 0 --steps 20000
    $R table
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from pld_ros.core.observation import ACTION_DIM, Float32Array
from pld_ros.learning.episode_steps import EpisodeSteps
from pld_ros.learning.learner import Learner
from pld_ros.models.residual_actor import ResidualActorConfig
from pld_ros.profile import Trainer

from .bc import BCPolicy, load_policy
from .env import STATE_DIM, LiftConfig, LiftEnv
from .rollout import ActFn, evaluate, executing_base, run_episode
from .run import BASE_POLICY, EVAL_SEED, OUT

METHODS = ("base", "pld", "pld_no_calql", "rlpd")
RESULTS = OUT / "compare"
TRAIN_SEED = 100_000
"""First reset seed of the training episodes: apart from the demonstrations' and the evaluation's."""


@dataclass(frozen=True)
class RunConfig:
    """One method's run; everything not here is the profile's :class:`Trainer` defaults."""

    method: str
    seed: int
    steps: int = 20_000
    """Environment steps of the whole run, warm-up included (the budget every method gets)."""
    warmup: int = 20
    """Episodes of the base policy alone before learning (PLD's warm-up; our choice of count)."""
    xi: float = 0.5
    """Residual scale for PLD, in robosuite's normalized action units (our choice: half the
    action range, enough to close the gripper where the base hovers)."""
    calql_steps: int = 2000
    """Cal-QL pretraining steps (our choice for this budget; the profile's default is 5000)."""
    eval_every: int = 2000
    eval_episodes: int = 20
    trainer: dict[str, float | int] = field(default_factory=dict)
    """Overrides of :class:`Trainer` fields."""
    standardize_state: bool = True
    """Give the learner the state standardized with the BC policy's statistics (mean and deviation
    of its demonstrations' states), as the BC policy itself sees it. Our choice: what decides a
    grasp, the cube relative to the hand, varies by centimetres, too little for networks on the
    raw state to resolve."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")


def residual_policy(
    learner: Learner,
    base: Callable[[Float32Array, int], Float32Array],
    xi: float,
    deterministic: bool,
    learner_state: Callable[[Float32Array], Float32Array],
    residuals: list[Float32Array] | None = None,
) -> ActFn:
    """Execute ``base + xi * residual``; the learner sees ``learner_state(state)``; the residuals
    drawn are appended to ``residuals``. Also the acting function of a trained specialist
    (``distill.py``)."""

    def act(state: Float32Array, t: int) -> tuple[Float32Array, Float32Array]:
        base_action = base(state, t)
        residual = learner.sac.act(learner_state(state), base_action, deterministic=deterministic)
        if residuals is not None:
            residuals.append(residual)
        return base_action, np.clip(base_action + xi * residual, -1.0, 1.0).astype(np.float32)

    return act


def standardizer(bc: BCPolicy, enabled: bool) -> Callable[[Float32Array], Float32Array]:
    """What the learner sees of a state: standardized with ``bc``'s statistics when ``enabled``
    (see :attr:`RunConfig.standardize_state`), else the state as it is."""
    mean, std = bc.state_mean.numpy(), bc.state_std.numpy()

    def learner_state(state: Float32Array) -> Float32Array:
        if not enabled:
            return state
        standardized: Float32Array = ((state - mean) / std).astype(np.float32)
        return standardized

    return learner_state


def run(
    config: RunConfig,
    base_path: Path,
    log: Callable[[str], None] = print,
    after_episode: Callable[[Learner, int, int], None] | None = None,
) -> dict[str, object]:
    """One method's run; returns its learning curve and counters (see the module docstring).
    ``after_episode(learner, episodes, steps)`` is called after each episode's learning (the
    learning methods only), e.g. to look inside the learner (``probe.py``)."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(1)  # several runs share the machine; torch's own threads only contend
    env = LiftEnv(LiftConfig())
    bc = load_policy(base_path)
    started = time.perf_counter()
    if config.method == "base":
        result = evaluate(executing_base(bc.act), env, config.eval_episodes, EVAL_SEED)
        log(f"base: {result.summary()}")
        single = [{"steps": 0.0, "success_rate": result.success_rate, "updates": 0.0}]
        return {
            "config": asdict(config),
            "curve": single,
            "episodes": 0,
            "wall_seconds": time.perf_counter() - started,
        }

    learner_state = standardizer(bc, config.standardize_state)
    zero = np.zeros(ACTION_DIM, dtype=np.float32)
    whole_action = config.method == "rlpd"
    # RLPD without a residual: the actor's "residual" is the whole action, on a zero base.
    base: Callable[[Float32Array, int], Float32Array] = (lambda state, t: zero) if whole_action else bc.act
    xi = 1.0 if whole_action else config.xi
    pretrain = 0 if config.method == "pld_no_calql" else config.calql_steps
    trainer = Trainer.model_validate({"device": "cpu", "calql_pretrain_steps": pretrain, **config.trainer})
    actor = ResidualActorConfig(num_views=0, state_dim=STATE_DIM, residual_scale=(1.0,) * ACTION_DIM)
    learner = Learner(trainer, actor, capacity=1_000_000, warmup_episodes=config.warmup, seed=config.seed)
    curve: list[dict[str, float]] = []
    steps = episode = 0

    def evaluation() -> None:
        result = evaluate(
            residual_policy(learner, base, xi, True, learner_state), env, config.eval_episodes, EVAL_SEED
        )
        curve.append({"steps": steps, "success_rate": result.success_rate, "updates": learner.sac.updates})
        updates = learner.sac.updates
        log(f"{config.method} seed {config.seed}: {steps} steps, {updates} updates: {result.summary()}")

    next_eval = config.eval_every
    while steps < config.steps:
        seed = TRAIN_SEED + 10_000 * config.seed + episode
        warm = episode < config.warmup
        if warm:
            record = run_episode(env, executing_base(bc.act), seed)
            executed = np.clip(record.actions, -1.0, 1.0)
            # The base acted alone: a zero residual on its action, or the whole executed action
            # as the actor's output when there is no residual.
            residual = executed if whole_action else np.zeros_like(executed)
            bases = np.zeros_like(executed) if whole_action else record.base_actions
        else:
            drawn: list[Float32Array] = []
            record = run_episode(env, residual_policy(learner, base, xi, False, learner_state, drawn), seed)
            residual, bases = np.asarray(drawn, dtype=np.float32), record.base_actions
        final_base = base(record.next_states[-1], record.length)
        learner.add(
            EpisodeSteps(
                state=learner_state(np.concatenate([record.states, record.next_states[-1:]])),
                base_action=np.concatenate([bases, final_base[None]]),
                residual=residual,
                reward=record.rewards,
                terminal=record.success,
            ),
            "offline" if warm and record.success else "online",
        )
        learner.train()
        steps += record.length
        episode += 1
        if after_episode is not None:
            after_episode(learner, episode, steps)
        if steps >= next_eval or steps >= config.steps:
            evaluation()
            next_eval += config.eval_every
    return {
        "config": asdict(config),
        "curve": curve,
        "episodes": episode,
        "wall_seconds": time.perf_counter() - started,
    }


def result_path(method: str, seed: int) -> Path:
    return RESULTS / f"{method}-{seed}.json"


def steps_to(curve: list[dict[str, float]], rate: float) -> float | None:
    """Environment steps of the first evaluation at or above ``rate``; None if never."""
    return next((point["steps"] for point in curve if point["success_rate"] >= rate), None)


def table(results: dict[str, list[dict[str, object]]], checkpoints: list[int]) -> str:
    """Markdown: success rate (mean +- std over seeds) at each checkpoint, steps to 90 %."""
    header = (
        "| method | seeds | "
        + " | ".join(f"{c} steps" for c in checkpoints)
        + " | steps to 90 % (per seed) |"
    )
    lines = [header, "|" + " --- |" * (len(checkpoints) + 3)]
    for method in METHODS:
        runs = results.get(method, [])
        if not runs:
            continue
        cells = []
        for checkpoint in checkpoints:
            rates = []
            for result in runs:
                curve: list[dict[str, float]] = result["curve"]  # type: ignore[assignment]
                # Evaluations fall on the first episode end past each eval_every steps: the first
                # one at or after the checkpoint stands for it. The base policy's single one
                # stands for every checkpoint.
                after = [p["success_rate"] for p in curve if p["steps"] >= checkpoint or len(curve) == 1]
                if after:
                    rates.append(after[0])
            cells.append(f"{100 * np.mean(rates):.0f} +- {100 * np.std(rates):.0f} %" if rates else "-")
        reach = [steps_to(r["curve"], 0.9) for r in runs]  # type: ignore[arg-type]
        reached = ", ".join("never" if s is None else f"{s:.0f}" for s in reach)
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + f" | {reached} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.robosuite_lift.compare", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    r = commands.add_parser(
        "run", help="one method, one seed; writes out/robosuite_lift/compare/<method>-<seed>.json"
    )
    r.add_argument("--method", choices=METHODS, required=True)
    r.add_argument("--seed", type=int, default=0)
    defaults = RunConfig(method="pld", seed=0)
    for name in ("steps", "warmup", "calql_steps", "eval_every", "eval_episodes"):
        r.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    r.add_argument("--xi", type=float, default=defaults.xi)
    r.add_argument("--trainer", type=json.loads, default={}, help="JSON object of Trainer overrides")
    r.add_argument("--base", type=Path, default=BASE_POLICY, help="the BC base policy's weights")
    r.add_argument("--raw-state", action="store_true", help="give the learner the unstandardized state")
    t = commands.add_parser("table", help="aggregate the runs written so far")
    t.add_argument("--checkpoints", type=int, nargs="+", default=[0, 5000, 10000, 20000])
    args = parser.parse_args(argv)
    if args.command == "run":
        config = RunConfig(
            method=args.method,
            seed=args.seed,
            steps=args.steps,
            warmup=args.warmup,
            xi=args.xi,
            calql_steps=args.calql_steps,
            eval_every=args.eval_every,
            eval_episodes=args.eval_episodes,
            trainer=args.trainer,
            standardize_state=not args.raw_state,
        )
        result = run(config, args.base)
        path = result_path(config.method, config.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")
    else:
        results: dict[str, list[dict[str, object]]] = {}
        for path in sorted(RESULTS.glob("*.json")):
            result = json.loads(path.read_text())
            results.setdefault(result["config"]["method"], []).append(result)
        print(table(results, args.checkpoints))


if __name__ == "__main__":
    main()
