from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pld_ros.learning.episode_steps import EpisodeSteps
from pld_ros.learning.replay_buffer import ReplayBuffer, TransitionBatch, sample_symmetric
from pld_ros.learning.residual_sac import ResidualSAC, calql_regularizer, onthefly_value
from pld_ros.models.residual_actor import ResidualActor, ResidualActorConfig
from pld_ros.models.resnet10 import ResNet10Config
from pld_ros.profile import Trainer

SMALL = Trainer(batch_size=16, critic_hidden_dim=16, onthefly_samples=4, cql_samples=3)
STATE_ACTOR = ResidualActorConfig(num_views=0, state_dim=3, hidden_dim=16, num_layers=2)
IMAGE_ACTOR = ResidualActorConfig(
    encoder=ResNet10Config(widths=(4, 4, 4, 4), embedding_dim=8), num_views=2, hidden_dim=16, num_layers=2
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def random_batch(size: int, state_dim: int, images: bool = False, seed: int = 0) -> TransitionBatch:
    generator = torch.Generator().manual_seed(seed)

    def views() -> torch.Tensor | None:
        if not images:
            return None
        return torch.randint(0, 256, (size, 2, 16, 16, 3), dtype=torch.uint8, generator=generator)

    return TransitionBatch(
        state=torch.randn(size, state_dim, generator=generator),
        images=views(),
        base_action=torch.randn(size, 7, generator=generator).clamp(-1, 1),
        residual=torch.rand(size, 7, generator=generator) * 2 - 1,
        reward=torch.rand(size, generator=generator),
        steps=torch.ones(size),
        done=(torch.rand(size, generator=generator) < 0.3).float(),
        next_state=torch.randn(size, state_dim, generator=generator),
        next_images=views(),
        next_base_action=torch.randn(size, 7, generator=generator).clamp(-1, 1),
        mc_return=torch.rand(size, generator=generator),
    )


# -- on-the-fly backup ----------------------------------------------------------------------------


def test_onthefly_value_is_the_max_over_samples_of_the_min_over_q_networks() -> None:
    q = torch.tensor([[[1.0, 5.0], [3.0, 0.0]], [[2.0, 4.0], [0.5, 1.0]]])  # [2 heads, 2 samples, 2]
    assert torch.equal(onthefly_value(q, None, 0.0), torch.tensor([1.0, 4.0]))
    log_prob = torch.tensor([[0.0, 0.0], [-10.0, 0.0]])
    assert torch.equal(onthefly_value(q, log_prob, 0.1), torch.tensor([1.5, 4.0]))


def test_the_backup_bootstraps_from_the_best_sampled_residual(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stub target critic whose Q is the residual's first value (the second head one more): the
    # best of many wide samples is near 1, a single sample averages near 0.
    wide = ResidualActorConfig(num_views=0, state_dim=3, hidden_dim=16, init_log_std=1.0)

    def stub(features: torch.Tensor, base: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return torch.stack([residual[:, 0], residual[:, 0] + 1.0])

    batch = random_batch(256, 3)
    targets = {}
    for samples in (1, 64):
        sac = ResidualSAC(SMALL.model_copy(update={"onthefly_samples": samples}), wide, device="cpu")
        monkeypatch.setattr(sac.target, "q_values", stub)
        with torch.no_grad():
            targets[samples] = sac._target(batch, None, greedy=True)
            if samples == 64:
                pretraining = sac._target(batch, None, greedy=False)
    discount, live = SMALL.discount, batch.done == 0.0
    best = (targets[64] - batch.reward) / discount
    assert torch.all(best[live] > 0.9) and torch.all(best[live] <= 1.0 + 1e-5)
    single = (targets[1] - batch.reward) / discount
    assert abs(float(single[live].mean())) < 0.2
    assert torch.equal(targets[64][~live], batch.reward[~live]), "a terminal step must not bootstrap"
    # The pretraining evaluates the fresh actor's deterministic residual (zero): no max.
    expected = batch.reward + discount * (1.0 - batch.done) * 0.0
    assert torch.allclose(pretraining, expected, atol=1e-6)


def test_an_n_step_target_discounts_the_next_value_and_biases_every_step() -> None:
    config = SMALL.model_copy(update={"reward_bias": -1.0})
    sac = ResidualSAC(config, ResidualActorConfig(num_views=0, state_dim=3, hidden_dim=16), device="cpu")
    batch = random_batch(64, 3)
    batch = TransitionBatch(**{**batch.__dict__, "steps": torch.full((64,), 3.0)})
    one = TransitionBatch(**{**batch.__dict__, "steps": torch.ones(64)})
    with torch.no_grad():
        three_step, one_step = sac._target(batch, None, greedy=False), sac._target(one, None, greedy=False)
    g = config.discount
    live = batch.done == 0.0
    # Same next value v: one-step is r - 1 + g v, three-step r - (1 + g + g^2) + g^3 v.
    value = (one_step - batch.reward + 1.0) / g
    expected = batch.reward - (1.0 + g + g**2) + g**3 * value * live
    torch.testing.assert_close(three_step, expected, rtol=1e-5, atol=1e-5)


# -- Cal-QL ---------------------------------------------------------------------------------------


def test_calql_raises_policy_values_to_the_monte_carlo_return() -> None:
    samples = 4
    q_data = torch.zeros(2, 1)
    q_random = torch.full((2, samples, 1), -100.0)
    q_policy = torch.full((2, samples, 1), -1.0, requires_grad=True)
    log_prob = torch.zeros(samples, 1)
    mc_return = torch.tensor([2.0])
    calql = calql_regularizer(q_data, q_random, q_policy, log_prob, mc_return)
    cql = calql_regularizer(q_data, q_random, q_policy, log_prob, None)
    log_n = float(np.log(samples))
    assert float(calql.detach()) == pytest.approx(2 * (2.0 + log_n), abs=1e-4)
    assert float(cql.detach()) == pytest.approx(2 * (-1.0 + log_n), abs=1e-4)
    # Below the bound, Cal-QL stops pushing the policy's Q values down; CQL does not.
    (grad,) = torch.autograd.grad(calql, q_policy)
    assert torch.all(grad == 0.0)
    (grad,) = torch.autograd.grad(cql, q_policy)
    assert torch.all(grad > 0.0)


def test_pretraining_uses_the_monte_carlo_bound_and_leaves_the_actor_alone() -> None:
    losses = {}
    for mc in (0.0, 50.0):
        torch.manual_seed(1)
        sac = ResidualSAC(SMALL, STATE_ACTOR, device="cpu")
        actor_before = {k: v.clone() for k, v in sac.actor.state_dict().items()}
        batch = random_batch(32, 3)
        batch = TransitionBatch(**{**batch.__dict__, "mc_return": torch.full((32,), mc)})
        losses[mc] = sac.pretrain_step(batch)["calql_loss"]
        assert all(torch.equal(v, sac.actor.state_dict()[k]) for k, v in actor_before.items())
        assert sac.pretrain_updates == 1 and sac.updates == 0
    assert losses[50.0] > losses[0.0] + 40.0
    without = ResidualSAC(SMALL.model_copy(update={"cql_alpha": 0.0}), STATE_ACTOR, device="cpu")
    assert "calql_loss" not in without.pretrain_step(random_batch(32, 3))


def test_the_actor_steps_once_per_critic_actor_ratio_updates() -> None:
    sac = ResidualSAC(SMALL.model_copy(update={"critic_actor_ratio": 3}), STATE_ACTOR, device="cpu")
    steps = [("actor_loss" in sac.update(random_batch(16, 3, seed=i))) for i in range(6)]
    assert steps == [False, False, True, False, False, True]
    assert sac.temperature != SMALL.initial_temperature


# -- checkpoints and export -----------------------------------------------------------------------


def test_a_checkpoint_restores_actions_and_training_continues_identically(tmp_path: Path) -> None:
    batches = [random_batch(8, 8, images=True, seed=i) for i in range(6)]
    images = batches[0].images
    assert images is not None
    original = ResidualSAC(SMALL, IMAGE_ACTOR, device="cpu")
    for batch in batches[:3]:
        original.update(batch)
    original.save(tmp_path / "checkpoint")
    torch.manual_seed(123)  # a different initialization
    restored = ResidualSAC(SMALL, IMAGE_ACTOR, device="cpu")
    restored.load(tmp_path / "checkpoint")
    assert restored.updates == 3 and restored.temperature == original.temperature

    state, base, views = batches[5].state.numpy(), batches[5].base_action.numpy(), images.numpy()
    assert np.array_equal(
        original.act(state, base, views, deterministic=True),
        restored.act(state, base, views, deterministic=True),
    )
    assert np.any(original.act(state, base, views, deterministic=True) != 0.0), "the actor has not moved"

    def continued(sac: ResidualSAC) -> list[dict[str, float]]:
        torch.manual_seed(7)
        return [sac.update(batch) for batch in batches[3:]]

    assert continued(original) == continued(restored)
    for mine, theirs in ((original.actor, restored.actor), (original.target, restored.target)):
        for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b), name


def test_a_checkpoint_of_another_actor_is_refused(tmp_path: Path) -> None:
    ResidualSAC(SMALL, STATE_ACTOR, device="cpu").save(tmp_path / "checkpoint")
    other = ResidualSAC(SMALL, ResidualActorConfig(num_views=0, state_dim=4, hidden_dim=16), device="cpu")
    with pytest.raises(ValueError, match="another actor"):
        other.load(tmp_path / "checkpoint")


def test_exported_actor_runs_as_the_robot_loads_it(tmp_path: Path) -> None:
    sac = ResidualSAC(SMALL, IMAGE_ACTOR, device="cpu")
    for seed in range(2):
        sac.update(random_batch(8, 8, images=True, seed=seed))
    path = tmp_path / "actor.safetensors"
    sac.export_actor(path, version=4)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["version"] == "4" and metadata["updates"] == "2"
    actor = ResidualActor(ResidualActorConfig.from_json(metadata["config"]))
    actor.load_state_dict(load_file(str(path)))
    batch = random_batch(4, 8, images=True, seed=9)
    assert batch.images is not None
    expected = sac.act(
        batch.state.numpy(), batch.base_action.numpy(), batch.images.numpy(), deterministic=True
    )
    with torch.no_grad():
        got = actor.act(batch.images, batch.state, batch.base_action, deterministic=True)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


# -- a short real learning run ---------------------------------------------------------------------

GOAL = np.array([0.5, 0.5], dtype=np.float32)
BASE_BIAS = np.array([0.35, -0.25], dtype=np.float32)
"""The base policy's systematic error: it settles about 0.18 from the goal, twice the radius."""
BASE_NOISE, RADIUS, STEP, HORIZON, XI = 0.3, 0.1, 0.1, 25, 0.5
UPDATES = 1500
"""Online updates of the learning test: at 1000 one torch seed in five had not learned yet; at 1500
the residual beats the base by 0.25 with all five tried (0-4), so other numerics pass too."""


def base_action(position: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    action = np.zeros(7, dtype=np.float32)
    pull = 2.0 * (GOAL - position) + BASE_BIAS + BASE_NOISE * rng.standard_normal(2)
    action[:2] = np.clip(pull, -1.0, 1.0)
    return action


def reach(
    rng: np.random.Generator, residual: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
) -> EpisodeSteps:
    """A 2-D point reaching a disc in HORIZON steps under base + XI * residual (its first two
    values move the point); reward 1 and the end on arrival."""
    position = rng.uniform(-0.5, 0.0, 2).astype(np.float32)
    states, bases, residuals, rewards = [position], [base_action(position, rng)], [], []
    arrived = False
    for _ in range(HORIZON):
        r = np.zeros(7, dtype=np.float32) if residual is None else residual(position, bases[-1])
        move = np.clip((bases[-1] + XI * r)[:2], -1.0, 1.0)
        position = np.clip(position + STEP * move, -1.0, 1.0).astype(np.float32)
        arrived = bool(np.linalg.norm(position - GOAL) < RADIUS)
        states.append(position)
        bases.append(base_action(position, rng))
        residuals.append(r)
        rewards.append(float(arrived))
        if arrived:
            break
    return EpisodeSteps(
        np.stack(states), np.stack(bases), np.stack(residuals), np.array(rewards, np.float32), arrived
    )


def test_the_residual_learns_to_correct_a_biased_base_policy() -> None:
    # Discount 0.9 instead of 0.99: at this scale, reaching sooner must be worth visibly more.
    config = Trainer(
        batch_size=64,
        critic_hidden_dim=64,
        actor_lr=1e-3,
        critic_lr=1e-3,
        target_update_rate=0.01,
        initial_temperature=0.05,
        discount=0.9,
        onthefly_samples=4,
        calql_pretrain_steps=200,
    )
    actor = ResidualActorConfig(
        num_views=0, state_dim=2, hidden_dim=64, num_layers=2, residual_scale=(1.0,) * 7
    )
    sac = ResidualSAC(config, actor, device="cpu")
    rng = np.random.default_rng(0)
    offline, online = ReplayBuffer(100_000, config.discount), ReplayBuffer(100_000, config.discount)
    for episode in (reach(rng, None) for _ in range(200)):
        if episode.success:
            offline.add(episode)
    assert 5 <= offline.episodes <= 60, "the base policy should succeed rarely"
    for _ in range(config.calql_pretrain_steps):
        sac.pretrain_step(offline.sample(config.batch_size, rng))
    while sac.updates < UPDATES:
        episode = reach(rng, lambda s, b: sac.act(s, b))
        online.add(episode)
        for _ in range(len(episode)):
            sac.update(sample_symmetric(offline, online, config.batch_size, config.offline_fraction, rng))

    def success_rate(residual: Callable[[np.ndarray, np.ndarray], np.ndarray] | None) -> float:
        evaluation = np.random.default_rng(1)
        return float(np.mean([reach(evaluation, residual).success for _ in range(100)]))

    base = success_rate(None)
    learned = success_rate(lambda s, b: sac.act(s, b, deterministic=True))
    assert base < 0.35 and learned > base + 0.25, (base, learned)
