"""Learner throughput on this CPU: PLD updates per second at batch 256, and where the time goes.

Two variants, both with the profile's default Trainer section (batch 256, 10 on-the-fly samples,
critic-actor ratio 2) on synthetic episodes:

- ``state``: a state vector of 40 values (a robosuite-like observation), no images;
- ``image``: two 128x128 views through the default ResNet-10 plus the arm's proprioception.

For each: the mean time of an RLPD-sampled batch, of an online update (:meth:`ResidualSAC.update`)
and of a Cal-QL pretraining step, updates/s, then a torch profile of a few updates broken down by
the learner's phases (its ``record_function`` labels: augment, target = the on-the-fly backup with
its encoder passes, critic_forward, critic_backward with the optimizer step, target_update, actor).

    scripts/in_env.sh python bench/learner_throughput.py --updates 20 --image-updates 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from pld_ros.learning.episode_steps import EpisodeSteps
from pld_ros.learning.replay_buffer import ReplayBuffer, TransitionBatch, sample_symmetric
from pld_ros.learning.residual_sac import ResidualSAC
from pld_ros.models.residual_actor import ResidualActorConfig
from pld_ros.profile import Trainer

STATE_DIM, VIEWS, SIZE, EPISODE_STEPS = 40, 2, 128, 50
PHASES = ("augment", "target", "critic_forward", "calql", "critic_backward", "target_update", "actor")


def episodes(count: int, images: bool, rng: np.random.Generator) -> list[EpisodeSteps]:
    state_dim = 8 if images else STATE_DIM
    out = []
    for _ in range(count):
        steps = EPISODE_STEPS
        views = rng.integers(0, 256, (steps + 1, VIEWS, SIZE, SIZE, 3), dtype=np.uint8) if images else None
        out.append(
            EpisodeSteps(
                state=rng.standard_normal((steps + 1, state_dim)).astype(np.float32),
                base_action=rng.uniform(-1, 1, (steps + 1, 7)).astype(np.float32),
                residual=rng.uniform(-1, 1, (steps, 7)).astype(np.float32),
                reward=(rng.random(steps) < 0.05).astype(np.float32),
                terminal=True,
                images=views,
            )
        )
    return out


def mean_seconds(run: Callable[[], object], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) / repeats


def bench(name: str, images: bool, updates: int, episodes_per_buffer: int) -> None:
    config = Trainer()
    rng = np.random.default_rng(0)
    actor = (
        ResidualActorConfig(num_views=VIEWS)
        if images
        else ResidualActorConfig(num_views=0, state_dim=STATE_DIM)
    )
    sac = ResidualSAC(config, actor, device="cpu")
    offline, online = ReplayBuffer(100_000, config.discount), ReplayBuffer(100_000, config.discount)
    for buffer in (offline, online):
        for episode in episodes(episodes_per_buffer, images, rng):
            buffer.add(episode)

    def batch() -> TransitionBatch:
        return sample_symmetric(offline, online, config.batch_size, config.offline_fraction, rng)

    sac.update(batch())  # warm-up: allocations, first-call overheads
    sample = mean_seconds(batch, max(updates, 5))
    update = mean_seconds(lambda: sac.update(batch()), updates) - sample
    pretrain = mean_seconds(lambda: sac.pretrain_step(batch()), max(1, updates // 2)) - sample
    print(
        f"{name}: batch {config.batch_size}, sample {sample * 1e3:.1f} ms, update {update * 1e3:.1f} ms "
        f"({1.0 / update:.2f} updates/s; {1.0 / (update + sample):.2f} with sampling), "
        f"Cal-QL pretrain step {pretrain * 1e3:.1f} ms"
    )
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(
            max(2, updates // 2) // 2 * 2
        ):  # an even count: as many actor steps as the ratio gives
            sac.update(batch())
    totals = {
        event.key: event.cpu_time_total for event in prof.key_averages() if event.key.startswith("sac/")
    }
    whole = sum(totals.values())
    shares = ", ".join(
        f"{phase} {100 * totals[f'sac/{phase}'] / whole:.0f}%" for phase in PHASES if f"sac/{phase}" in totals
    )
    print(f"{name}: profile of the update (share of the labelled time): {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--updates", type=int, default=50, help="timed updates of the state variant")
    parser.add_argument("--image-updates", type=int, default=4, help="timed updates of the image variant")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads")
    bench("state (S=40)", images=False, updates=args.updates, episodes_per_buffer=20)
    if args.image_updates:
        bench(
            f"image ({VIEWS}x{SIZE}x{SIZE})", images=True, updates=args.image_updates, episodes_per_buffer=10
        )


if __name__ == "__main__":
    main()
