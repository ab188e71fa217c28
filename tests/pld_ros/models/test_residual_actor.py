from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from pld_ros.models.residual_actor import ResidualActor, ResidualActorConfig, save_actor
from pld_ros.models.resnet10 import ResNet10Config

SMALL = ResidualActorConfig(encoder=ResNet10Config(widths=(8, 8, 16, 16), embedding_dim=8), hidden_dim=32)


def inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 2, 32, 32, 3), dtype=torch.uint8, generator=generator)
    return images, torch.randn(batch, 8, generator=generator), torch.randn(batch, 7, generator=generator)


def test_a_fresh_actor_adds_nothing_deterministically() -> None:
    actor = ResidualActor(SMALL)
    assert torch.equal(actor.act(*inputs(), deterministic=True), torch.zeros(2, 7))


def test_samples_are_residuals_in_the_unit_box_with_finite_log_probability() -> None:
    actor = ResidualActor(SMALL)
    torch.manual_seed(0)
    residual, log_prob = actor.sample(*inputs(batch=64))
    assert residual.shape == (64, 7) and log_prob.shape == (64,)
    assert residual.abs().max() <= 1.0 and residual.std() > 0.05
    assert torch.isfinite(log_prob).all()


def test_log_probability_matches_the_change_of_variables() -> None:
    # A 1-D check of the tanh correction against torch.distributions.
    actor = ResidualActor(SMALL)
    torch.manual_seed(1)
    residual, log_prob = actor.sample(*inputs(batch=4))
    mean, log_std = actor(*inputs(batch=4))
    base = torch.distributions.Normal(mean, log_std.exp())
    squashed = torch.distributions.TransformedDistribution(base, [torch.distributions.TanhTransform()])
    expected = squashed.log_prob(residual.clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1)  # type: ignore[no-untyped-call]
    torch.testing.assert_close(log_prob, expected, atol=1e-3, rtol=1e-3)


def test_log_std_is_clamped_to_the_documented_bounds() -> None:
    actor = ResidualActor(SMALL)
    with torch.no_grad():
        actor.log_std.bias.fill_(50.0)
    _, log_std = actor(*inputs())
    assert torch.all(log_std == SMALL.log_std_max)


def test_gradients_reach_the_encoder() -> None:
    actor = ResidualActor(SMALL)
    residual, log_prob = actor.sample(*inputs())
    (residual.sum() + log_prob.sum()).backward()  # type: ignore[no-untyped-call]
    grad = actor.encoder.stem[0].weight.grad
    assert grad is not None


def test_saved_weights_carry_version_updates_and_config(tmp_path: Path) -> None:
    actor = ResidualActor(SMALL)
    path = tmp_path / "actor.safetensors"
    save_actor(actor, path, version=3, updates=1500)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        keys = set(f.keys())
    assert metadata["version"] == "3" and metadata["updates"] == "1500"
    assert ResidualActorConfig.from_json(metadata["config"]) == SMALL
    assert keys == set(actor.state_dict())


def test_config_json_round_trip_and_bad_json() -> None:
    assert ResidualActorConfig.from_json(SMALL.to_json()) == SMALL
    assert json.loads(SMALL.to_json())["encoder"]["widths"] == [8, 8, 16, 16]
    with pytest.raises(ValueError, match="not a residual actor config"):
        ResidualActorConfig.from_json('{"hidden_dim": 3}')


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"residual_scale": (1.0,) * 6}, "residual_scale"),
        ({"log_std_min": 1.0, "log_std_max": 0.0}, "log_std_min"),
        ({"init_log_std": 9.0}, "init_log_std"),
        ({"num_layers": 0}, "positive"),
    ],
)
def test_bad_config_is_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResidualActorConfig(**kwargs)  # type: ignore[arg-type]
