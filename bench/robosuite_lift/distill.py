"""PLD's closing loop on robosuite Lift (issue 6): distil the Stage 1 specialist into the base policy.

Does fine-tuning the BC base policy on the specialist's successful hybrid rollouts (PLD data) beat
fine-tuning it on the base policy's own successes, and match the scripted expert's demonstrations,
with the same number of episodes and the same training budget? Three commands, in this order
(robosuite venv; everything goes to ``out/robosuite_lift/distill/``)::

    R="scripts/in_robosuite_env.sh python -m bench.robosuite_lift.distill"
    $R specialist [--seed 0]     # Stage 1: specialist-<seed>.safetensors + .json
    $R collect [--seed 0]        # Stage 2 and the two baselines' data: pld/base/expert.npz
    $R finetune                  # Stage 3 on each dataset, 3 seeds, evaluation: results.json

1. ``specialist``: :func:`bench.robosuite_lift.compare.run` with :func:`specialist_config` (the best
   PLD settings of the comparison), then the actor's weights in the robot's format
   (:func:`pld_ros.models.residual_actor.actor_weights`) and a JSON file beside them: the run's
   config (xi, state standardization), the base policy's file and sha256, the evaluation.
2. ``collect``: three datasets of N successful episodes (:class:`~bench.robosuite_lift.bc.Demos`,
   every attempted episode, with its success flag; fine-tuning keeps the successes): ``pld``,
   Stage 2's hybrid rollouts (the base policy for k ~ U[0, K] steps, then base + xi * the
   specialist's deterministic residual); ``base``, the base policy alone; ``expert``, the noisy
   scripted expert the base policy was trained from. States and executed actions per step (every
   one of these policies returns actions within [-1, 1], so the environment executes them as they
   are).
3. ``finetune``: BC of the base policy's architecture, initialised from its weights and input
   statistics, on each dataset with the same gradient steps and seeds; each fine-tuned policy and
   the base policy evaluated on the same held-out seeds; a table and ``results.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pld_ros.core.atomic_file import atomic_write
from pld_ros.learning.learner import Learner
from pld_ros.models.residual_actor import ResidualActorConfig
from pld_ros.policies.weights import WeightsError, load_local
from pld_ros.profile import Trainer

from .bc import BCPolicy, Demos, load_policy, save_policy, train_bc
from .compare import RunConfig, residual_policy, run, standardizer
from .env import LiftConfig, LiftEnv
from .expert import ExpertConfig, ScriptedExpert
from .rollout import ActFn, Env, EpisodeRecord, Evaluation, evaluate, executing_base, run_episode
from .run import BASE_POLICY, DEMO_ACTION_NOISE, DEMO_GRASP_OFFSET, EVAL_SEED, OUT

DISTILL = OUT / "distill"
DATASETS = ("pld", "base", "expert")
FIRST_SEED = {"pld": 200_000, "base": 300_000, "expert": 400_000}
"""First reset seed of each dataset's episodes: apart from the demonstrations' (0, 1, ...), the
evaluation's (1000, ...), Stage 1's (100_000 + 10_000 * seed, ...) and each other's."""
MAX_PROBE_STEPS = 40
"""K of Stage 2's probe k ~ U[0, K]: the profile's default ``policies.residual.max_probe_steps``."""
SUCCESSES = 50
"""Successful episodes per dataset (the issue's same size for all three)."""
MAX_ATTEMPTS_PER_SUCCESS = 20
"""Collection gives up after this many episodes per success asked for (a policy that almost never
succeeds would otherwise run forever)."""
GRADIENT_STEPS = 2000
"""Fine-tuning budget, every dataset alike: about 200 passes over 50 episodes of ~45 steps at the
BC batch size of 256, as many passes as the base policy's own training."""
FINETUNE_SEEDS = (0, 1, 2)
EVAL_EPISODES = 100
"""Held-out evaluation episodes (seeds ``EVAL_SEED``...): a standard error of about 5 points."""
SPECIALIST_TRAINER: dict[str, float | int] = {"n_step": 5, "initial_temperature": 0.01, "cql_alpha": 0.1}
"""Trainer overrides of the best PLD runs of the comparison (README, session of 2026-12-01)."""


def specialist_config(seed: int, eval_episodes: int = EVAL_EPISODES) -> RunConfig:
    """Stage 1's run: 10k environment steps, Cal-QL 1000 steps, :data:`SPECIALIST_TRAINER`, one
    evaluation at the end on ``eval_episodes`` held-out seeds (evaluations do not change training:
    the deterministic actor draws no random numbers)."""
    return RunConfig(
        method="pld",
        seed=seed,
        steps=10_000,
        calql_steps=1000,
        eval_every=10_000,
        eval_episodes=eval_episodes,
        trainer=SPECIALIST_TRAINER,
    )


def specialist_paths(seed: int) -> tuple[Path, Path]:
    """The actor's weights and the JSON file describing them."""
    return DISTILL / f"specialist-{seed}.safetensors", DISTILL / f"specialist-{seed}.json"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda file: file.write(json.dumps(data, indent=1).encode()))


# -- Stage 1 ------------------------------------------------------------------------------------


def train_specialist(seed: int, base_path: Path, eval_episodes: int) -> dict[str, object]:
    """Run Stage 1 (:func:`specialist_config`) and save the specialist; returns what the JSON holds."""
    config = specialist_config(seed, eval_episodes)
    trained: list[Learner] = []

    def keep(learner: Learner, episodes: int, steps: int) -> None:
        trained[:] = [learner]

    result = run(config, base_path, after_episode=keep)
    weights, description = specialist_paths(seed)
    weights.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(weights, lambda file: file.write(trained[0].sac.actor_weights(version=1)))
    saved = {
        **result,
        "base": str(base_path),
        "base_sha256": sha256(base_path),
        "weights": weights.name,
    }
    write_json(description, saved)
    return saved


@dataclass(frozen=True)
class Specialist:
    """A saved Stage 1 specialist, ready to act on top of its base policy."""

    config: RunConfig
    learner: Learner
    """A learner holding the specialist's actor (its buffers are empty: it only acts)."""
    base: BCPolicy

    def act_fn(self) -> ActFn:
        """``base + xi * residual`` with the deterministic residual, from the first step."""
        learner_state = standardizer(self.base, self.config.standardize_state)
        return residual_policy(self.learner, self.base.act, self.config.xi, True, learner_state)


def load_specialist(seed: int, base_path: Path) -> Specialist:
    """What :func:`train_specialist` saved; FileNotFoundError or WeightsError naming the file."""
    weights_path, description = specialist_paths(seed)
    if not description.is_file():
        raise FileNotFoundError(f"{description}: no specialist; run `distill specialist --seed {seed}` first")
    saved = json.loads(description.read_text())
    if saved["base_sha256"] != sha256(base_path):
        raise WeightsError(f"{description}: trained on another base policy than {base_path}")
    config = RunConfig(**saved["config"])
    weights = load_local(weights_path)
    try:
        actor = ResidualActorConfig.from_json(weights.metadata["config"])
        trainer = Trainer.model_validate({"device": "cpu", **config.trainer})
        learner = Learner(trainer, actor, capacity=1, warmup_episodes=0)
        learner.sac.actor.load_state_dict(weights.tensors)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{weights_path}: not a specialist's actor: {exc}") from None
    learner.sac.actor.eval()
    return Specialist(config, learner, load_policy(base_path))


# -- Stage 2 and the baselines' data ------------------------------------------------------------


def hybrid_policy(
    base: ActFn, specialist: ActFn, max_probe_steps: int, rng: np.random.Generator, probes: list[int]
) -> ActFn:
    """Stage 2's rollout: ``base`` alone for the first k ~ U[0, ``max_probe_steps``] steps of each
    episode (k drawn at its first step and appended to ``probes``), then ``specialist``."""

    def act(state: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
        if t == 0:
            probes.append(int(rng.integers(0, max_probe_steps + 1)))
        return (base if t < probes[-1] else specialist)(state, t)

    return act


def collect_successes(
    env: Env, act: ActFn, first_seed: int, successes: int, log: Callable[[str], None] = print
) -> list[EpisodeRecord]:
    """Episodes with seeds ``first_seed, first_seed + 1, ...`` until ``successes`` of them succeeded;
    all of them, in order. RuntimeError after :data:`MAX_ATTEMPTS_PER_SUCCESS` per success."""
    records: list[EpisodeRecord] = []
    succeeded = 0
    while succeeded < successes:
        if len(records) >= MAX_ATTEMPTS_PER_SUCCESS * successes:
            raise RuntimeError(f"only {succeeded} successes in {len(records)} episodes")
        records.append(run_episode(env, act, first_seed + len(records)))
        succeeded += records[-1].success
        if len(records) % 20 == 0:
            log(f"  {len(records)} episodes, {succeeded} successes")
    return records


def dataset_policies(specialist: Specialist, max_probe_steps: int, probes: list[int]) -> dict[str, ActFn]:
    """Each dataset's policy; the random streams (probe lengths, expert noise) are seeded with the
    dataset's first reset seed; Stage 2's probe lengths are appended to ``probes``."""
    base = executing_base(specialist.base.act)
    expert_config = ExpertConfig(action_noise_std=DEMO_ACTION_NOISE, grasp_offset_std=DEMO_GRASP_OFFSET)
    expert = ScriptedExpert(expert_config, np.random.default_rng(FIRST_SEED["expert"]))
    probe_rng = np.random.default_rng(FIRST_SEED["pld"])
    return {
        "pld": hybrid_policy(base, specialist.act_fn(), max_probe_steps, probe_rng, probes),
        "base": base,
        "expert": executing_base(expert.act),
    }


def probe_summary(records: list[EpisodeRecord], probes: list[int]) -> dict[str, float]:
    """Stage 2's probe lengths and how many successes the base policy finished before the takeover."""
    return {
        "mean_probe_steps": float(np.mean(probes)),
        "successes_while_probing": sum(
            r.success and r.length <= k for r, k in zip(records, probes, strict=True)
        ),
    }


def collect(specialist_seed: int, base_path: Path, successes: int, max_probe_steps: int) -> dict[str, object]:
    """Collect and save the three datasets; returns the collection's summary (also saved)."""
    specialist = load_specialist(specialist_seed, base_path)
    env = LiftEnv(LiftConfig())
    summary: dict[str, object] = {"specialist_seed": specialist_seed, "max_probe_steps": max_probe_steps}
    probes: list[int] = []
    for name, act in dataset_policies(specialist, max_probe_steps, probes).items():
        started = time.perf_counter()
        print(f"{name}: collecting {successes} successes from seed {FIRST_SEED[name]}")
        records = collect_successes(env, act, FIRST_SEED[name], successes)
        demos = Demos.from_records(records)
        demos.save(DISTILL / f"{name}.npz")
        kept = demos.successful(None)
        entry = {
            "first_seed": FIRST_SEED[name],
            "attempts": len(records),
            "successes": len(kept.successes),
            "transitions": len(kept.states),
            "seconds": time.perf_counter() - started,
        }
        summary[name] = {**entry, **probe_summary(records, probes)} if name == "pld" else entry
        print(f"{name}: {summary[name]}")
    write_json(DISTILL / "collect.json", summary)
    return summary


# -- Stage 3 ------------------------------------------------------------------------------------


def evaluation_entry(result: Evaluation, seconds: float) -> dict[str, float]:
    return {"success_rate": result.success_rate, "mean_length": result.mean_length, "seconds": seconds}


def finetune_and_evaluate(
    name: str, base: BCPolicy, env: Env, seed: int, gradient_steps: int, episodes: int
) -> dict[str, float]:
    """Fine-tune ``base`` on dataset ``name`` (its successes) with ``seed``, save the policy,
    evaluate it on the held-out seeds."""
    config = replace(base.config, max_demos=None, seed=seed, gradient_steps=gradient_steps)
    started = time.perf_counter()
    model, losses = train_bc(Demos.load(DISTILL / f"{name}.npz"), config, init=base)
    trained = time.perf_counter()
    save_policy(model, DISTILL / f"finetuned-{name}-{seed}.safetensors")
    result = evaluate(executing_base(model.act), env, episodes, EVAL_SEED)
    print(f"{name}, seed {seed}: final loss {losses[-1]:.4f}, {result.summary()}", flush=True)
    entry = evaluation_entry(result, time.perf_counter() - trained)
    return {"seed": seed, "final_loss": losses[-1], "train_seconds": trained - started, **entry}


def finetune(
    base_path: Path, specialist_seed: int, seeds: list[int], gradient_steps: int, episodes: int
) -> dict[str, Any]:
    """Stage 3 on every dataset and the evaluations; returns what ``results.json`` holds."""
    base = load_policy(base_path)
    env = LiftEnv(LiftConfig())
    started = time.perf_counter()
    base_result = evaluate(executing_base(base.act), env, episodes, EVAL_SEED)
    base_seconds = time.perf_counter() - started
    print(f"base: {base_result.summary()}", flush=True)
    specialist = json.loads(specialist_paths(specialist_seed)[1].read_text())
    datasets: dict[str, object] = {}
    for name in DATASETS:
        kept = Demos.load(DISTILL / f"{name}.npz").successful(None)
        runs = [finetune_and_evaluate(name, base, env, seed, gradient_steps, episodes) for seed in seeds]
        datasets[name] = {"episodes": len(kept.successes), "transitions": len(kept.states), "runs": runs}
    results = {
        "settings": {
            "base": str(base_path),
            "specialist_seed": specialist_seed,
            "finetune_seeds": seeds,
            "gradient_steps": gradient_steps,
            "eval_episodes": episodes,
            "eval_seed": EVAL_SEED,
            "finetune_config": asdict(replace(base.config, max_demos=None, gradient_steps=gradient_steps)),
            "collection": json.loads((DISTILL / "collect.json").read_text()),
        },
        "base": evaluation_entry(base_result, base_seconds),
        "specialist": {
            "success_rate": specialist["curve"][-1]["success_rate"],
            "eval_episodes": specialist["config"]["eval_episodes"],
        },
        "datasets": datasets,
    }
    write_json(DISTILL / "results.json", results)
    return results


def table(results: dict[str, Any]) -> str:
    """Markdown: each policy's held-out success rate (mean ± std over fine-tuning seeds)."""
    episodes = results["settings"]["eval_episodes"]
    specialist = results["specialist"]
    lines = [
        f"| policy | data: episodes | transitions | success, {episodes} held-out episodes | per seed |",
        "| --- | --- | --- | --- | --- |",
        f"| base policy (BC, 10 demos) | - | - | {100 * results['base']['success_rate']:.0f} % | - |",
        f"| PLD specialist (base + xi * residual) | - | - | {100 * specialist['success_rate']:.0f} % "
        f"({specialist['eval_episodes']} episodes) | - |",
    ]
    for name, data in results["datasets"].items():
        rates = [run["success_rate"] for run in data["runs"]]
        per_seed = ", ".join(f"{100 * r:.0f}" for r in rates)
        lines.append(
            f"| base fine-tuned on {name} | {data['episodes']} | {data['transitions']} | "
            f"{100 * np.mean(rates):.1f} ± {100 * np.std(rates):.1f} % | {per_seed} % |"
        )
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.robosuite_lift.distill", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--base", type=Path, default=BASE_POLICY, help="the BC base policy's weights")
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("specialist", help="Stage 1: train and save the PLD specialist")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--eval-episodes", type=int, default=EVAL_EPISODES)
    c = commands.add_parser("collect", help="Stage 2's data and the two baselines' data")
    c.add_argument("--seed", type=int, default=0, help="the specialist's seed")
    c.add_argument("--successes", type=int, default=SUCCESSES)
    c.add_argument("--max-probe-steps", type=int, default=MAX_PROBE_STEPS, help="K of k ~ U[0, K]")
    f = commands.add_parser("finetune", help="Stage 3 on each dataset, evaluation, table")
    f.add_argument("--specialist-seed", type=int, default=0)
    f.add_argument("--seeds", type=int, nargs="+", default=list(FINETUNE_SEEDS))
    f.add_argument("--gradient-steps", type=int, default=GRADIENT_STEPS)
    f.add_argument("--episodes", type=int, default=EVAL_EPISODES)
    commands.add_parser("table", help="print the table of results.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the machine is shared; one thread also keeps the runs repeatable
    if args.command == "specialist":
        saved = train_specialist(args.seed, args.base, args.eval_episodes)
        print(f"specialist {args.seed}: {saved['curve']}; {saved['wall_seconds']:.0f} s")
    elif args.command == "collect":
        collect(args.seed, args.base, args.successes, args.max_probe_steps)
    elif args.command == "finetune":
        print(
            table(finetune(args.base, args.specialist_seed, args.seeds, args.gradient_steps, args.episodes))
        )
    else:
        print(table(json.loads((DISTILL / "results.json").read_text())))


if __name__ == "__main__":
    main()
