"""``pld reward ...``: labelled frames, training and evaluation of the reward (success) classifier.

Mounted by the main CLI as ``pld reward``; until then ``python -m pld_ros.training.reward_commands``.

- ``collect PROFILE --episodes N --out DIR [--policy expert|near-miss|base|FILE.onnx]``: run simulated
  episodes (the profile's simulated world in this process, as ``pld train``) and store every frame
  labelled by the simulator's privileged success signal (:mod:`pld_ros.training.reward_dataset`).
- ``train DATA... --out MODEL``: train with an episode-wise split and hard-negative mining, choose
  the threshold on the validation split, export ONNX with the threshold in its metadata
  (:mod:`pld_ros.training.reward_classifier`).
- ``eval MODEL DATA... [--plot FILE]``: precision, recall and confusion matrix at the model's
  threshold, a threshold sweep table and plot.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from pld_ros.sim.franka_pick_cube_expert import ExpertConfig, FrankaPickCubeExpert
from pld_ros.training.commands import expert_policy, first_action
from pld_ros.training.reward_dataset import (
    episode_path,
    labelled_rollout,
    privileged_heads,
    save_labelled_episode,
)
from pld_ros.training.rollouts import Episode, Policy, SimRollouts
from pld_ros.training.sim_episodes import SimEpisodeError, run_sim_episodes, sim_profile

app = typer.Typer(
    help="Reward classifier: collect labelled frames, train with hard-negative mining, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COLLECT_HOST = "127.0.0.60"
"""Default loopback address of the collection's franky-sim; not ``pld train``'s, so both can run."""
EXPERT = ExpertConfig(translation_noise=0.002, rotation_noise=0.01, grasp_offset=0.004)
"""The ``expert`` policy of ``collect``: the noisy scripted expert of ``scripts/train_sim_models.sh``
(2 mm and 0.01 rad of noise per tick, a 4 mm grasp offset per episode), which usually succeeds:
most positive frames, and the frames of a grasp about to lift."""
NEAR_MISS_HEIGHTS = ((0.040, 0.055), (0.072, 0.095))
"""TCP heights (m above the table) the ``near-miss`` expert lifts the cube to and holds it at, one
drawn per episode, uniformly from either band with equal odds. The fingers close with the TCP at
most ``ExpertConfig.grasp_tolerance`` (8 mm) above the cube's centre, so the cube rises about
1.2-3.5 cm (below the world's 4 cm success lift: a grasped cube hovering, the negatives that look
most like success) or 4.4-7.5 cm (low positives; the plain expert lifts to 13 cm). The band around
the 4 cm mark itself is left out: there the label is the lift to the millimetre, which a 128 px
view does not show."""


def near_miss_lift_height(seed: int) -> float:
    """The ``near-miss`` expert's lift height in the episode of ``seed``
    (:data:`NEAR_MISS_HEIGHTS`), from a generator of its own: the expert's noise stays that of
    ``seed``."""
    rng = np.random.default_rng((seed, 1))
    band = NEAR_MISS_HEIGHTS[int(rng.integers(len(NEAR_MISS_HEIGHTS)))]
    return float(rng.uniform(*band))


def _fail(message: str) -> typer.Exit:
    typer.echo(f"pld reward: {message}", err=True)
    return typer.Exit(2)


def _policy_label(policy: str) -> str:
    if policy in ("expert", "near-miss", "base"):
        return policy
    # An ONNX file: its name, made fit for an episode id.
    return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(policy).stem).lstrip(".") or "policy"


@app.command()
def collect(
    profile: Annotated[str, typer.Argument(help="Profile name or path; its simulated variant is used.")],
    episodes: Annotated[int, typer.Option(min=1, help="Episodes to run.")],
    out: Annotated[Path, typer.Option(help="Dataset directory (one .npz per episode).")],
    policy: Annotated[
        str,
        typer.Option(
            help="Who acts: 'expert' (the noisy scripted expert: mostly successes), 'near-miss' "
            "(the same expert holding the cube just below or just above the success height), "
            "'base' (the profile's base policy: failures, near misses), or an ONNX policy file "
            "with the sim_base_policy contract."
        ),
    ] = "expert",
    seed: Annotated[int, typer.Option(min=0, help="Episode i uses cube layout and noise seed seed + i.")] = 0,
    success_ticks: Annotated[
        int,
        typer.Option(
            min=1,
            help="Consecutive ticks of success that end an episode: the frames after the first "
            "success are the positives, so more than the profile's debounce.",
        ),
    ] = 15,
    host: Annotated[
        str, typer.Option(help="Loopback address franky-sim binds (ports 1337, 1338).")
    ] = COLLECT_HOST,
) -> None:
    """Run simulated episodes and store their frames labelled by the privileged success signal.

    Episode ids are ``<policy>-<seed>``; ids already in OUT are skipped, so an interrupted
    collection resumes where it stopped."""
    try:
        loaded, _, views = sim_profile(profile)
        heads, final_head = privileged_heads(loaded)
    except (SimEpisodeError, ValueError) as exc:
        raise _fail(str(exc)) from None
    assert loaded.policies is not None  # sim_profile checked it
    assert loaded.reward is not None  # privileged_heads checked it
    if tuple(loaded.reward.views) != views:
        # The rollouts render the base policy's views; the classifier must see the same ones.
        raise _fail(
            f"{profile}: reward.views {loaded.reward.views} differ from the base policy's views {views}"
        )
    label = _policy_label(policy)
    period = 1.0 / loaded.supervisor.control_rate
    todo = [seed + i for i in range(episodes) if not episode_path(out, f"{label}-{seed + i:06d}").exists()]
    if len(todo) < episodes:
        typer.echo(f"{episodes - len(todo)} episodes already in {out}, skipped")

    lift_heights: dict[int, float] = {}
    """The near-miss expert's lift height by episode seed, kept in the episode's info."""
    if policy in ("expert", "near-miss"):

        def policy_for(rollouts: SimRollouts, episode_seed: int) -> Policy:
            config = EXPERT
            if policy == "near-miss":
                lift_heights[episode_seed] = near_miss_lift_height(episode_seed)
                config = replace(EXPERT, lift_height=lift_heights[episode_seed])
            return expert_policy(FrankaPickCubeExpert(rollouts.world.cube_pose, config, seed=episode_seed))

    else:
        from pld_ros.policies.onnx_policy import OnnxPolicy

        path = loaded.policies.base.path if policy == "base" else Path(policy)
        if path is None or (policy == "base" and loaded.policies.base.backend != "onnx"):
            raise _fail(f"{profile}: the base policy is not an ONNX file; pass one with --policy FILE.onnx")
        try:
            model = OnnxPolicy(path, views, providers=["CPUExecutionProvider"])
        except (OSError, ValueError) as exc:
            raise _fail(str(exc)) from None
        act = first_action(model.infer)

        def policy_for(rollouts: SimRollouts, episode_seed: int) -> Policy:
            return act

    counts = {"done": 0, "frames": 0, "positives": 0}

    def store(episode_seed: int, episode: Episode) -> None:
        labelled = labelled_rollout(
            episode,
            f"{label}-{episode_seed:06d}",
            heads,
            final_head,
            period,
            {"profile": loaded.name, "policy": policy}
            | ({"lift_height": lift_heights[episode_seed]} if episode_seed in lift_heights else {}),
        )
        save_labelled_episode(labelled, out)
        counts["done"] += 1
        counts["frames"] += len(episode)
        counts["positives"] += int(episode.success.sum())
        outcome = "success" if episode.succeeded else "failure"
        typer.echo(
            f"[{counts['done']}/{len(todo)}] {labelled.episode_id}: {outcome} in {len(episode)} ticks, "
            f"{int(episode.success.sum())} positive frames"
            + (f" (cut short: {episode.fault})" if episode.fault else "")
            + f"; {counts['frames']} frames, {counts['positives']} positive so far"
        )

    try:
        run_sim_episodes(profile, host, seed, todo, policy_for, store, success_ticks)
    except SimEpisodeError as exc:
        raise _fail(str(exc)) from None


@app.command()
def train(
    data: Annotated[list[Path], typer.Argument(help="Dataset directories (from collect or another source).")],
    out: Annotated[Path, typer.Option(help="ONNX file to write (the reward node's onnx backend).")],
    precision_target: Annotated[
        float,
        typer.Option(min=0.5, max=1.0, help="Precision the threshold is chosen for; mining stops there."),
    ] = 0.99,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the split, initialization and batches.")] = 0,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs of the first run (default 4).")] = None,
    mining_epochs: Annotated[
        int | None, typer.Option(min=0, help="Fine-tuning epochs per mining round (default 2).")
    ] = None,
    rounds: Annotated[int | None, typer.Option(min=0, help="Mining rounds at most (default 3).")] = None,
    boundary_ticks: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Frames on each side of a label change left out of training, threshold and mining "
            "(ambiguous: the label flips between two near-identical frames); default 1.",
        ),
    ] = None,
) -> None:
    """Train the classifier with hard-negative mining; write ONNX with the threshold in its metadata.

    Episodes are split into training, reserve (mined, not trained on at first), validation (the
    threshold) and test (the reported held-out scores), never splitting an episode."""
    from pld_ros.training.reward_classifier import (
        RewardTrainingConfig,
        export_reward_model,
        format_confusion,
        train_reward_classifier,
    )
    from pld_ros.training.reward_dataset import load_labelled_dataset

    start = time.monotonic()
    changes: dict[str, object] = {"precision_target": precision_target, "seed": seed}
    for name, value in (
        ("epochs", epochs),
        ("mining_epochs", mining_epochs),
        ("max_rounds", rounds),
        ("boundary_ticks", boundary_ticks),
    ):
        if value is not None:
            changes[name] = value
    try:
        config = RewardTrainingConfig().with_updates(**changes)
        episodes = load_labelled_dataset(data)
        result = train_reward_classifier(episodes, config, log=typer.echo)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    export_reward_model(result, out)
    typer.echo(
        f"{len(result.rounds) - 1} mining round(s); {result.stop_reason}; {time.monotonic() - start:.0f} s"
    )
    for h, head in enumerate(result.heads):
        guarded = f"held-out without {result.boundary_ticks} frame(s) at label changes"
        typer.echo(format_confusion(head, result.rounds[-1].test[h], guarded))
        typer.echo(format_confusion(head, result.test_all_frames[h], "held-out, all frames"))
    typer.echo(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB), thresholds {list(result.thresholds)}")


@app.command("eval")
def evaluate(
    model: Annotated[Path, typer.Argument(help="ONNX classifier (from pld reward train).")],
    data: Annotated[list[Path], typer.Argument(help="Dataset directories to score.")],
    plot: Annotated[Path | None, typer.Option(help="Write the threshold sweep plot (PNG) here.")] = None,
    threshold: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Score at this threshold instead of the model's own."),
    ] = None,
    boundary_ticks: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Also score without the frames this close to a label change (default: the "
            "model's training setting).",
        ),
    ] = None,
    held_out: Annotated[
        bool,
        typer.Option(
            "--held-out",
            help="Score only the episodes the model's training held out (its test split); "
            "otherwise every frame of DATA, which may include frames it was trained on.",
        ),
    ] = False,
) -> None:
    """Precision, recall and confusion matrix at the threshold, a threshold sweep table and plot."""
    from pld_ros.training.reward_classifier import (
        OnnxRewardModel,
        confusion,
        evaluate_head,
        format_confusion,
        format_matrix,
        format_sweep,
        frame_set,
        plot_sweep,
    )
    from pld_ros.training.reward_dataset import load_labelled_dataset

    try:
        classifier = OnnxRewardModel(model)
        episodes = load_labelled_dataset(data)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    metadata = classifier.metadata
    if threshold is None and metadata is None:
        raise _fail(f"{model} has no threshold in its metadata: pass --threshold")
    if held_out:
        if metadata is None or not metadata.held_out_episodes:
            raise _fail(f"{model} lists no held-out episodes in its metadata")
        episodes = [e for e in episodes if e.episode_id in set(metadata.held_out_episodes)]
        if not episodes:
            raise _fail(f"none of {model}'s held-out episodes is in {', '.join(map(str, data))}")
    frames = frame_set(episodes)
    if metadata is not None and metadata.views != frames.view_names:
        raise _fail(f"{model} takes views {metadata.views}, the data has {frames.view_names}")
    if tuple(frames.views.shape[1:]) != classifier.input_shape:
        raise _fail(f"{model} takes images {classifier.input_shape}, the data has {frames.views.shape[1:]}")
    probabilities = classifier.probabilities(frames.views)
    if probabilities.shape[1] < len(frames.heads):
        raise _fail(f"{model} has {probabilities.shape[1]} heads, the data labels {len(frames.heads)}")
    typer.echo(
        f"{len(frames)} frames of {len(episodes)} episodes"
        + (" (the model's held-out episodes)" if held_out else "")
    )
    thresholds = metadata.thresholds if threshold is None and metadata is not None else None
    guard = boundary_ticks if boundary_ticks is not None else metadata.boundary_ticks if metadata else 0
    guarded = frame_set(episodes, guard).labels
    evaluations = []
    for h, head in enumerate(frames.heads):
        at = thresholds[h] if thresholds is not None else float(threshold or 0.0)
        evaluation = evaluate_head(head, probabilities[:, h], frames.labels[:, h], at)
        evaluations.append(evaluation)
        typer.echo("\n" + format_confusion(head, evaluation.at_threshold, "all frames"))
        if guard:
            without = f"without {guard} frame(s) at label changes"
            typer.echo(format_confusion(head, confusion(probabilities[:, h], guarded[:, h], at), without))
        typer.echo(format_matrix(evaluation.at_threshold))
        typer.echo(format_sweep(evaluation))
    if plot is not None:
        plot_sweep(evaluations, plot, metadata.precision_target if metadata else None)
        typer.echo(f"\nwrote {plot}")


if __name__ == "__main__":
    app()
