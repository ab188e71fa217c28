"""``pld train ...``: demonstrations, the embedded simulation base policy and success classifier.

Mounted by the main CLI as ``pld train``; until then ``python -m pld_ros.training.commands ...``.
The simulated world runs in this process (franky-sim bound to ``--host``); no ROS graph is needed.
``scripts/train_sim_models.sh`` runs the whole chain with the seeds of the shipped models.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from pld_ros.core.observation import ACTION_DIM, Float32Array, Observation
from pld_ros.core.spatial import Pose
from pld_ros.sim.franka_pick_cube_expert import ExpertConfig, FrankaPickCubeExpert
from pld_ros.training.rollouts import EPISODE_SUFFIX, Episode, Policy, SimRollouts, save_episode
from pld_ros.training.sim_episodes import SimEpisodeError, run_sim_episodes, sim_profile

app = typer.Typer(
    help="Train and evaluate the simulation models (demonstrations, base policy, success classifier).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_PROFILE = "franka_pick_cube"
DEFAULT_HOST = "127.0.0.50"

ProfileOption = Annotated[str, typer.Option(help="Profile name or path; its simulated variant is used.")]
HostOption = Annotated[str, typer.Option(help="Loopback address franky-sim binds (ports 1337, 1338).")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"pld train: {message}", err=True)
    return typer.Exit(2)


def expert_policy(expert: FrankaPickCubeExpert) -> Policy:
    """The expert as a policy: it reads the TCP pose and closure from the observation's proprio."""

    def act(observation: Observation) -> Float32Array:
        proprio = observation.proprio
        values = proprio.astype(np.float64)
        return expert.act(Pose.of(values[:3], values[3:7]), float(values[7]))

    return act


def first_action(infer: Callable[[Observation], Float32Array]) -> Policy:
    """A chunking policy executed one action per call: the first of each chunk (chunk_horizon 1
    in the profile; executing longer chunks is the base policy node's business)."""

    def act(observation: Observation) -> Float32Array:
        first: Float32Array = infer(observation).reshape(-1, ACTION_DIM)[0]
        return first

    return act


@app.command("collect-demos")
def collect_demos(
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to record.")],
    out: Annotated[Path, typer.Option(help="Directory for the episode files (one .npz each).")],
    translation_noise: Annotated[
        float, typer.Option(min=0.0, help="Expert noise per tick, m (std).")
    ] = 0.002,
    rotation_noise: Annotated[float, typer.Option(min=0.0, help="Expert noise per tick, rad (std).")] = 0.01,
    grasp_offset: Annotated[float, typer.Option(min=0.0, help="Per-episode grasp offset, m (std).")] = 0.004,
    seed: Annotated[int, typer.Option(min=0, help="Episode i uses cube layout and noise seed seed + i.")] = 0,
    success_ticks: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Consecutive success ticks that end an episode (default: the profile's debounce). "
            "More give the success classifier more frames of a lifted cube.",
        ),
    ] = None,
    profile: ProfileOption = DEFAULT_PROFILE,
    host: HostOption = DEFAULT_HOST,
) -> None:
    """Record scripted-expert episodes in the simulated world (failed ones too, flagged)."""
    config = ExpertConfig(
        translation_noise=translation_noise, rotation_noise=rotation_noise, grasp_offset=grasp_offset
    )
    counts = {"done": 0, "success": 0, "fault": 0}
    todo = [seed + i for i in range(episodes) if not _episode_path(out, seed + i).exists()]
    if len(todo) < episodes:
        typer.echo(f"{episodes - len(todo)} episodes already in {out}, skipped")

    def policy_for(rollouts: SimRollouts, episode_seed: int) -> Policy:
        return expert_policy(FrankaPickCubeExpert(rollouts.world.cube_pose, config, seed=episode_seed))

    def store(episode_seed: int, episode: Episode) -> None:
        counts["done"] += 1
        outcome = "success" if episode.succeeded else "failure"
        if episode.fault:
            # The expert did not fail; the simulated arm did. Not a demonstration of anything.
            counts["fault"] += 1
            outcome = f"arm fault, not stored ({episode.fault})"
        else:
            save_episode(episode, _episode_path(out, episode_seed))
            counts["success"] += episode.succeeded
        typer.echo(
            f"[{counts['done']}/{len(todo)}] seed {episode_seed}: {outcome} in {len(episode)} ticks; "
            f"{counts['success']} successes, {counts['fault']} arm faults so far"
        )

    try:
        run_sim_episodes(profile, host, seed, todo, policy_for, store, success_ticks)
    except SimEpisodeError as exc:
        raise _fail(str(exc)) from None


def _episode_path(directory: Path, episode_seed: int) -> Path:
    return directory / f"episode_{episode_seed:06d}{EPISODE_SUFFIX}"


@app.command()
def evaluate(
    policy: Annotated[Path, typer.Option(help="ONNX base policy (the sim_base_policy contract).")],
    episodes: Annotated[
        int, typer.Option(min=1, help="Episodes to count (one cut short by an arm fault is replaced).")
    ] = 30,
    seed: Annotated[int, typer.Option(min=0, help="Episode i uses cube layout seed seed + i.")] = 100_000,
    out: Annotated[Path | None, typer.Option(help="Also store the episodes here.")] = None,
    profile: ProfileOption = DEFAULT_PROFILE,
    host: HostOption = DEFAULT_HOST,
) -> None:
    """Run an ONNX base policy in the simulated world and print its success rate."""
    from pld_ros.policies.onnx_policy import OnnxPolicy

    try:
        _, _, views = sim_profile(profile)
        model = OnnxPolicy(policy, views, providers=["CPUExecutionProvider"])
    except (SimEpisodeError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    results: list[bool] = []
    faults = 0

    def score(episode_seed: int, episode: Episode) -> None:
        nonlocal faults
        if out is not None:
            save_episode(episode, _episode_path(out, episode_seed))
        if episode.fault:
            faults += 1
            typer.echo(f"seed {episode_seed}: arm fault, not counted ({episode.fault})")
            return
        results.append(episode.succeeded)
        typer.echo(
            f"[{len(results)}/{episodes}] seed {episode_seed}: "
            f"{'success' if episode.succeeded else 'failure'} in {len(episode)} ticks; "
            f"{sum(results)}/{len(results)} = {sum(results) / len(results):.0%}"
        )

    # An episode cut short by an arm fault is replaced by one more seed, up to as many again.
    seeds = [seed + i for i in range(2 * episodes)]
    try:
        run_sim_episodes(
            profile,
            host,
            seed,
            seeds,
            lambda _r, _s: first_action(model.infer),
            score,
            done=lambda: len(results) >= episodes,
        )
    except SimEpisodeError as exc:
        raise _fail(str(exc)) from None
    counted = len(results)
    typer.echo(
        f"success rate: {sum(results)}/{counted} = {sum(results) / max(counted, 1):.1%}"
        + (f" ({faults} episodes cut short by arm faults not counted)" if faults else "")
    )


@app.command("sim-base-policy")
def sim_base_policy(
    demos: Annotated[Path, typer.Option(help="Directory of episode files from collect-demos.")],
    out: Annotated[Path, typer.Option(help="ONNX file to write.")],
    seed: Annotated[int, typer.Option(min=0, help="Seed of initialization, shuffling and the split.")] = 0,
    max_demos: Annotated[
        int | None, typer.Option(min=1, help="Use only the first N successful demonstrations.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the config's epochs.")] = None,
) -> None:
    """Behaviour-clone the base policy on successful demonstrations and export it to ONNX."""
    from pld_ros.training.sim_base_policy import BasePolicyConfig, train_base_policy

    config = BasePolicyConfig(seed=seed)
    if max_demos is not None:
        config = config.with_updates(max_demos=max_demos)
    if epochs is not None:
        config = config.with_updates(epochs=epochs)
    try:
        train_base_policy(demos, out, config, log=typer.echo)
    except ValueError as exc:
        raise _fail(str(exc)) from None


@app.command("sim-classifier")
def sim_classifier(
    demos: Annotated[
        list[Path], typer.Option(help="Directory of episode files (expert or policy rollouts); repeatable.")
    ],
    out: Annotated[Path, typer.Option(help="ONNX file to write.")],
    seed: Annotated[int, typer.Option(min=0, help="Seed of initialization, shuffling and the split.")] = 0,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the config's epochs.")] = None,
    profile: ProfileOption = DEFAULT_PROFILE,
) -> None:
    """Train the success classifier on episode files labelled by the privileged signal.

    ``pld reward train`` (hard-negative mining, threshold in the ONNX metadata) on the frames of
    these episode files, converted in memory as ``pld reward collect`` stores them; held-out
    precision and recall are printed."""
    from pld_ros.training.reward_classifier import (
        RewardTrainingConfig,
        export_reward_model,
        train_reward_classifier,
    )
    from pld_ros.training.reward_dataset import labelled_rollout, privileged_heads
    from pld_ros.training.rollouts import episode_files, load_episode

    config = RewardTrainingConfig(seed=seed)
    if epochs is not None:
        config = config.with_updates(epochs=epochs)
    try:
        loaded, _, _ = sim_profile(profile)
        heads, final_head = privileged_heads(loaded)
        assert loaded.reward is not None  # privileged_heads checked it
        episodes = []
        for directory in demos:
            for path in episode_files(directory):
                episode = load_episode(path)
                if episode.view_names != loaded.reward.views:
                    raise ValueError(
                        f"{path}: views {episode.view_names}, the classifier takes {loaded.reward.views}"
                    )
                period = 1.0 / loaded.supervisor.control_rate
                episodes.append(
                    labelled_rollout(episode, f"{directory.name}-{path.stem}", heads, final_head, period)
                )
        if not episodes:
            raise ValueError(f"no episodes in {', '.join(map(str, demos))}")
        result = train_reward_classifier(episodes, config, log=typer.echo)
    except (SimEpisodeError, ValueError) as exc:
        raise _fail(str(exc)) from None
    export_reward_model(result, out)
    typer.echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB), thresholds {list(result.thresholds)}")


if __name__ == "__main__":
    app()
