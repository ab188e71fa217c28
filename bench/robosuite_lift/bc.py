"""The benchmark's base policy: behaviour cloning of a small MLP on a few noisy demonstrations.

It stands in for a VLA on a new task, as in the PLD paper's simulation studies: trained on few,
imperfect demonstrations, it succeeds some of the time (about 30-60 %), so the residual has
something to improve. The mediocrity comes from the data alone -- few demonstrations of a noisy
expert (:mod:`bench.robosuite_lift.expert`) -- nothing injects failures at run time. The settings
and the measured success rate are in ``bench/robosuite_lift/README.md``.

Model: state (:data:`~bench.robosuite_lift.env.STATE_DIM`) standardized with the training data's
statistics -> the PLD trunk (:func:`pld_ros.models.residual_actor.mlp`: Linear -> LayerNorm ->
tanh blocks) -> a linear head -> tanh, a 7-D action in [-1, 1]. Trained by mean squared error on
the demonstrations' actions; deterministic given :attr:`BCConfig.seed`.

Demonstrations are stored as one ``.npz`` file (:class:`Demos`); weights as safetensors with the
config and the state size as metadata.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional

from pld_ros.core.observation import ACTION_DIM, Float32Array
from pld_ros.models.residual_actor import mlp
from pld_ros.policies.weights import WeightsError, load_local

from .rollout import EpisodeRecord


@dataclass(frozen=True)
class Demos:
    """Demonstration episodes, concatenated: N steps of E episodes."""

    states: Float32Array
    """``[N, state_dim]``."""
    actions: Float32Array
    """``[N, 7]`` the executed (noisy) actions."""
    episode: npt.NDArray[np.int64]
    """``[N]`` index of each step's episode."""
    successes: npt.NDArray[np.bool_]
    """``[E]`` whether each episode succeeded."""
    seeds: npt.NDArray[np.int64]
    """``[E]`` each episode's reset seed."""

    @classmethod
    def from_records(cls, records: Sequence[EpisodeRecord]) -> Demos:
        if not records:
            raise ValueError("no episodes")
        return cls(
            states=np.concatenate([r.states for r in records]),
            actions=np.concatenate([r.actions for r in records]),
            episode=np.concatenate([np.full(r.length, i, dtype=np.int64) for i, r in enumerate(records)]),
            successes=np.array([r.success for r in records], dtype=bool),
            seeds=np.array([r.seed for r in records], dtype=np.int64),
        )

    def successful(self, max_episodes: int | None) -> Demos:
        """The steps of the successful episodes only, the first ``max_episodes`` of them (None: all)."""
        kept = np.flatnonzero(self.successes)[:max_episodes]
        if not len(kept):
            raise ValueError("no successful episodes")
        mask = np.isin(self.episode, kept)
        renumber = np.searchsorted(kept, self.episode[mask])
        return Demos(
            self.states[mask],
            self.actions[mask],
            renumber.astype(np.int64),
            self.successes[kept],
            self.seeds[kept],
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as file:
            np.savez_compressed(file, **asdict(self))

    @classmethod
    def load(cls, path: Path) -> Demos:
        with np.load(path) as data:
            return cls(
                states=data["states"].astype(np.float32),
                actions=data["actions"].astype(np.float32),
                episode=data["episode"].astype(np.int64),
                successes=data["successes"].astype(bool),
                seeds=data["seeds"].astype(np.int64),
            )


@dataclass(frozen=True)
class BCConfig:
    """Hyperparameters of :class:`BCPolicy` and of its training (our choice unless said)."""

    max_demos: int | None = 10
    """Successful demonstrations trained on (the first N of the file); None: all. The main
    mediocrity knob: fewer demonstrations, more states the policy has never seen."""
    hidden_dim: int = 256
    """Units of each hidden layer (PLD's actor width)."""
    num_layers: int = 2
    """Hidden Linear -> LayerNorm -> tanh blocks."""
    epochs: int = 200
    """Passes over the training steps (a few thousand steps, so many passes are cheap)."""
    gradient_steps: int | None = None
    """None: train ``epochs`` passes. A number: exactly this many gradient steps instead, however
    many passes that takes, so that datasets of different sizes get the same budget (the
    distillation benchmark, ``distill.py``)."""
    batch_size: int = 256
    """Steps per gradient step."""
    learning_rate: float = 1e-3
    """Adam learning rate (constant)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    seed: int = 0
    """Seed of the initialization and the batch order."""
    threads: int = 1
    """torch CPU threads (one keeps the result bit-exact and leaves the other core to the simulator)."""

    def __post_init__(self) -> None:
        if min(self.hidden_dim, self.num_layers, self.epochs, self.batch_size, self.threads) <= 0:
            raise ValueError("hidden_dim, num_layers, epochs, batch_size and threads must be positive")
        if self.gradient_steps is not None and self.gradient_steps <= 0:
            raise ValueError(f"gradient_steps must be positive, got {self.gradient_steps}")
        if self.max_demos is not None and self.max_demos <= 0:
            raise ValueError(f"max_demos must be positive, got {self.max_demos}")
        if self.learning_rate <= 0.0 or self.weight_decay < 0.0:
            raise ValueError("learning_rate must be positive and weight_decay not negative")


class BCPolicy(nn.Module):
    """State ``[B, state_dim]`` -> action ``[B, 7]`` in [-1, 1]."""

    state_mean: torch.Tensor
    state_std: torch.Tensor

    def __init__(self, state_dim: int, config: BCConfig | None = None) -> None:
        super().__init__()
        self.config = config or BCConfig()
        self.state_dim = state_dim
        self.trunk = mlp(state_dim, self.config.hidden_dim, self.config.num_layers)
        self.head = nn.Linear(self.config.hidden_dim, ACTION_DIM)
        # Training-data statistics, set before training and saved with the weights.
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))

    def set_statistics(self, states: Float32Array) -> None:
        """Standardize inputs with ``states``' mean and deviation (near-constant ones keep scale 1)."""
        values = torch.as_tensor(states, dtype=torch.float32)
        std = values.std(dim=0)
        self.state_mean.copy_(values.mean(dim=0))
        self.state_std.copy_(torch.where(std > 1e-4, std, torch.ones_like(std)))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.trunk((states - self.state_mean) / self.state_std)))

    def act(self, state: Float32Array, t: int = 0) -> Float32Array:
        """One action for one state (``t`` unused: the policy is memoryless; the argument makes it
        a base policy for :func:`bench.robosuite_lift.rollout.executing_base`)."""
        with torch.no_grad():
            action = self(torch.as_tensor(state, dtype=torch.float32).unsqueeze(0))[0]
        result: Float32Array = action.numpy().astype(np.float32)
        return result


def _initial_model(data: Demos, config: BCConfig, init: BCPolicy | None) -> BCPolicy:
    """A fresh policy standardizing with ``data``'s statistics, or a copy of ``init``: its weights and
    its statistics, so that the inputs it learned on keep their meaning."""
    model = BCPolicy(data.states.shape[1], config)
    if init is None:
        model.set_statistics(data.states)
        return model
    shape = (init.state_dim, init.config.hidden_dim, init.config.num_layers)
    if shape != (model.state_dim, config.hidden_dim, config.num_layers):
        raise ValueError(
            f"cannot fine-tune a policy of (state_dim, hidden_dim, num_layers) {shape} "
            f"with {(model.state_dim, config.hidden_dim, config.num_layers)}"
        )
    model.load_state_dict(init.state_dict())
    return model


def train_bc(
    demos: Demos,
    config: BCConfig | None = None,
    *,
    init: BCPolicy | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[BCPolicy, list[float]]:
    """Train on the first ``config.max_demos`` successful episodes; the policy and each epoch's loss.

    ``init``: fine-tune a copy of this policy (same architecture and state size; its input
    statistics are kept) instead of training a fresh one. ``init`` itself is left unchanged.
    """
    config = config or BCConfig()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    data = demos.successful(config.max_demos)
    states = torch.as_tensor(data.states)
    # The environment clips actions to [-1, 1] and the tanh head cannot leave it: regress the clipped ones.
    targets = torch.as_tensor(data.actions).clamp(-1.0, 1.0)
    model = _initial_model(data, config, init)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    log(f"{len(data.successes)} demonstrations, {len(states)} steps")
    losses = []
    start = time.monotonic()
    model.train()
    batches = math.ceil(len(states) / config.batch_size)
    epochs = config.epochs if config.gradient_steps is None else math.ceil(config.gradient_steps / batches)
    budget = epochs * batches if config.gradient_steps is None else config.gradient_steps
    updates = 0
    for epoch in range(epochs):
        total, seen = 0.0, 0
        order = torch.randperm(len(states), generator=generator)
        # The last pass of a gradient-step budget may stop part-way.
        end = min(len(states), (budget - updates) * config.batch_size)
        for start_index in range(0, end, config.batch_size):
            index = order[start_index : start_index + config.batch_size]
            loss = functional.mse_loss(model(states[index]), targets[index])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
            optimizer.step()
            total += loss.item() * len(index)
            seen += len(index)
            updates += 1
        losses.append(total / seen)
        if (epoch + 1) % max(1, epochs // 10) == 0:
            seconds = time.monotonic() - start
            log(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f} ({seconds:.0f} s)")
    model.eval()
    return model, losses


def save_policy(model: BCPolicy, path: Path) -> None:
    """Write the weights as safetensors, with the config and the state size as metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    metadata = {"config": json.dumps(asdict(model.config)), "state_dim": str(model.state_dim)}
    save_file(state, str(path), metadata=metadata)


def load_policy(path: Path) -> BCPolicy:
    """Read what :func:`save_policy` wrote; :class:`~pld_ros.policies.weights.WeightsError` if unusable."""
    weights = load_local(path)
    try:
        config = BCConfig(**json.loads(weights.metadata["config"]))
        model = BCPolicy(int(weights.metadata["state_dim"]), config)
        model.load_state_dict(weights.tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path}: not a BC policy of this benchmark: {exc}") from None
    model.eval()
    return model
