from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bench.robosuite_lift.bc import BCConfig, Demos, load_policy, save_policy, train_bc
from pld_ros.policies.weights import WeightsError

STATE_DIM = 5


def synthetic_demos(episodes: int = 6, steps: int = 40, seed: int = 0) -> Demos:
    """Episodes whose actions are a fixed smooth function of the state; odd episodes failed."""
    rng = np.random.default_rng(seed)
    states = rng.normal(0.0, 1.0, (episodes * steps, STATE_DIM)).astype(np.float32)
    weights = rng.normal(0.0, 0.5, (STATE_DIM, 7))
    return Demos(
        states=states,
        actions=np.tanh(states @ weights).astype(np.float32),
        episode=np.repeat(np.arange(episodes), steps),
        successes=np.arange(episodes) % 2 == 0,
        seeds=np.arange(episodes) + 100,
    )


SMALL = BCConfig(max_demos=None, hidden_dim=32, epochs=60, batch_size=32)


def test_only_the_first_successful_episodes_are_kept() -> None:
    demos = synthetic_demos()
    kept = demos.successful(max_episodes=2)
    assert kept.seeds.tolist() == [100, 102]
    assert np.array_equal(np.unique(kept.episode), [0, 1])
    assert np.array_equal(kept.states[40:], demos.states[80:120])


def test_demonstrations_survive_a_save_and_load(tmp_path: Path) -> None:
    demos = synthetic_demos()
    demos.save(tmp_path / "demos.npz")
    loaded = Demos.load(tmp_path / "demos.npz")
    for name in ("states", "actions", "episode", "successes", "seeds"):
        assert np.array_equal(getattr(loaded, name), getattr(demos, name))


def test_training_imitates_the_demonstrations_and_repeats_with_the_seed() -> None:
    demos = synthetic_demos()
    model, losses = train_bc(demos, SMALL)
    again, _ = train_bc(demos, SMALL)
    assert losses[-1] < 0.1 * losses[0]
    kept = demos.successful(None)
    predicted = model(torch.as_tensor(kept.states)).detach().numpy()
    assert np.mean((predicted - kept.actions) ** 2) < 0.02
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


def test_a_saved_policy_acts_the_same_after_loading(tmp_path: Path) -> None:
    model, _ = train_bc(synthetic_demos(), BCConfig(max_demos=2, hidden_dim=16, epochs=2))
    save_policy(model, tmp_path / "bc.safetensors")
    loaded = load_policy(tmp_path / "bc.safetensors")
    assert loaded.config == model.config
    state = np.linspace(-1.0, 1.0, STATE_DIM, dtype=np.float32)
    action = loaded.act(state)
    assert action.shape == (7,) and action.dtype == np.float32
    assert np.array_equal(action, model.act(state))


def test_a_file_that_is_not_a_bc_policy_is_rejected(tmp_path: Path) -> None:
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="not a BC policy"):
        load_policy(tmp_path / "other.safetensors")
