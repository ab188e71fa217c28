"""The embedded base policy of the simulated franka_pick_cube: behaviour cloning of the scripted expert.

It stands in for a VLA on a new setup: small, trained on few noisy demonstrations, deliberately
mediocre (about 30-60 % success), so residual RL has something to improve. The mediocrity comes
from the data and the budget alone -- few demonstrations (:attr:`BasePolicyConfig.max_demos`), a
noisy expert (``pld train collect-demos --translation-noise ...``), a small encoder and a short
training run -- nothing injects failures at run time; ``scripts/train_sim_models.sh`` holds the
settings of the shipped model and its measured success rate (17 of 30 episodes, 57 %). Its
typical failure: it comes down near the cube and dithers there without committing to the grasp.
To move the rate: more demonstrations or epochs raise it (6 epochs on 30 demonstrations of a
more hesitant expert gave about 10 %), fewer lower it.

Model: the project's ResNet-10 (:mod:`pld_ros.models.resnet10`, small widths) shared by the
views, its embeddings concatenated with proprioceptive features, and an MLP to an action chunk.
Every normalization is inside the model, so the ONNX file is self-contained:

- input ``images``: uint8 ``[B, V, H, W, 3]``, views in :attr:`BasePolicyConfig.views` order;
- input ``proprio``: float32 ``[B, 8]`` (:mod:`pld_ros.core.observation`);
- output ``actions``: float32 ``[B, chunk_horizon, 7]``, in the action convention of the same
  module (the contract of :mod:`pld_ros.policies.onnx_policy`).

The orientation enters as the first two columns of its rotation matrix rather than as the
quaternion: with the hand pointing down, ``qw`` is about 0 and the ``qw >= 0`` convention flips
the quaternion's sign from tick to tick; the matrix is the same for both signs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnx
import torch
from torch import nn
from torch.nn import functional

from pld_ros.core.observation import ACTION_DIM, PROPRIO_DIM, Float32Array
from pld_ros.models.proprio import PROPRIO_FEATURE_DIM, proprio_features
from pld_ros.models.residual_actor import mlp
from pld_ros.models.resnet10 import ResNet10Config, ResNet10Encoder
from pld_ros.policies.onnx_policy import ACTIONS, IMAGES, PROPRIO
from pld_ros.training.rollouts import Episode, episode_files, load_episode


@dataclass(frozen=True)
class BasePolicyConfig:
    """Hyperparameters of :class:`SimBasePolicy` and of its training."""

    encoder: ResNet10Config = field(
        default_factory=lambda: ResNet10Config(widths=(16, 32, 64, 128), embedding_dim=64)
    )
    """Image encoder shared by the views; a quarter of the paper widths and a 64-d embedding
    per view: a few hundred thousand weights, a small model on purpose."""
    views: tuple[str, ...] = ("wrist", "side")
    """Camera views in input order (the profile's ``policies.base.views``)."""
    chunk_horizon: int = 1
    """Actions predicted per call (H); the profile's ``policies.base.chunk_horizon``."""
    hidden_dim: int = 256
    """Units of each hidden layer of the MLP head."""
    num_layers: int = 2
    """Hidden Linear -> LayerNorm -> tanh blocks of the MLP head."""
    max_demos: int | None = 40
    """Successful demonstrations used for training (the first N by file name); None: all. The
    main mediocrity knob: fewer demonstrations, more states the policy has never seen."""
    val_fraction: float = 0.1
    """Fraction of the chosen demonstrations held out (whole episodes) for the validation loss."""
    epochs: int = 12
    """Passes over the training frames."""
    loss: Literal["l1", "mse"] = "l1"
    """Regression loss on normalized actions. L1 (as ACT) predicts the median action: near the
    cube, where the expert's small corrective steps average out, MSE's mean made the policy hover."""
    batch_size: int = 64
    """Frames per gradient step."""
    learning_rate: float = 3e-4
    """AdamW learning rate (constant)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    shift_pixels: int = 4
    """Random-shift augmentation: each view is padded by this many pixels (edge replicated) and
    cropped back at a random offset (DrQ); 0: none."""
    seed: int = 0
    """Seed of the initialization, the train / validation split and the batch order."""
    threads: int = 2
    """torch CPU threads for training."""

    def __post_init__(self) -> None:
        if not self.views:
            raise ValueError("at least one view is needed")
        if min(self.chunk_horizon, self.hidden_dim, self.num_layers, self.epochs, self.batch_size) <= 0:
            raise ValueError("chunk_horizon, hidden_dim, num_layers, epochs and batch_size must be positive")
        if self.max_demos is not None and self.max_demos <= 0:
            raise ValueError(f"max_demos must be positive, got {self.max_demos}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.shift_pixels < 0:
            raise ValueError(f"shift_pixels must not be negative, got {self.shift_pixels}")

    def with_updates(self, **changes: object) -> BasePolicyConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class SimBasePolicy(nn.Module):
    """uint8 images ``[B, V, H, W, 3]`` and proprio ``[B, 8]`` -> actions ``[B, H, 7]``."""

    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    action_mean: torch.Tensor
    action_std: torch.Tensor

    def __init__(self, config: BasePolicyConfig | None = None) -> None:
        super().__init__()
        self.config = config or BasePolicyConfig()
        self.encoder = ResNet10Encoder(self.config.encoder)
        in_dim = len(self.config.views) * self.config.encoder.embedding_dim + PROPRIO_FEATURE_DIM
        self.trunk = mlp(in_dim, self.config.hidden_dim, self.config.num_layers)
        self.head = nn.Linear(self.config.hidden_dim, self.config.chunk_horizon * ACTION_DIM)
        # Data statistics, set by set_statistics before training and exported with the weights.
        self.register_buffer("feature_mean", torch.zeros(PROPRIO_FEATURE_DIM))
        self.register_buffer("feature_std", torch.ones(PROPRIO_FEATURE_DIM))
        self.register_buffer("action_mean", torch.zeros(ACTION_DIM))
        self.register_buffer("action_std", torch.ones(ACTION_DIM))

    def set_statistics(self, proprio: Float32Array, actions: Float32Array) -> None:
        """Normalize inputs and outputs with the mean and standard deviation of training data
        (``[N, 8]`` proprio, ``[N, 7]`` actions); near-constant dimensions keep a unit scale."""
        features = proprio_features(torch.as_tensor(proprio, dtype=torch.float32))
        targets = torch.as_tensor(actions, dtype=torch.float32)
        for name, values in (("feature", features), ("action", targets)):
            std = values.std(dim=0)
            getattr(self, f"{name}_mean").copy_(values.mean(dim=0))
            getattr(self, f"{name}_std").copy_(torch.where(std > 1e-3, std, torch.ones_like(std)))

    def normalized(self, images: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """The chunk in normalized action units ``[B, H, 7]`` (what training regresses)."""
        features = (proprio_features(proprio) - self.feature_mean) / self.feature_std
        x = torch.cat([self.encoder.encode_views(images), features], dim=1)
        out: torch.Tensor = self.head(self.trunk(x))
        return out.reshape(images.shape[0], self.config.chunk_horizon, ACTION_DIM)

    def forward(self, images: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        return self.normalized(images, proprio) * self.action_std + self.action_mean


# ---- data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoFrames:
    """Training frames: N observations and their action chunks."""

    views: npt.NDArray[np.uint8]
    """N x V x H x W x 3."""
    proprio: Float32Array
    """N x 8."""
    chunks: Float32Array
    """N x chunk_horizon x 7: the actions of ticks t .. t + H - 1 (the last one repeated past the end)."""

    def __len__(self) -> int:
        return len(self.proprio)


def episode_frames(episodes: Sequence[Episode], chunk_horizon: int) -> DemoFrames:
    """The frames of some episodes with their action chunks."""
    if not episodes:
        raise ValueError("no episodes")
    chunks = []
    for episode in episodes:
        steps = len(episode)
        index = np.minimum(np.arange(steps)[:, None] + np.arange(chunk_horizon)[None, :], steps - 1)
        chunks.append(episode.actions[index])
    return DemoFrames(
        views=np.concatenate([e.views for e in episodes]),
        proprio=np.concatenate([e.proprio for e in episodes]).astype(np.float32),
        chunks=np.concatenate(chunks).astype(np.float32),
    )


def load_demonstrations(directory: Path, views: Sequence[str], max_demos: int | None) -> list[Episode]:
    """The successful episodes of a directory (the first ``max_demos`` by name), checked to hold
    ``views`` in that order; ValueError when there are none."""
    episodes = []
    for path in episode_files(directory):
        episode = load_episode(path)
        if episode.view_names != tuple(views):
            raise ValueError(f"{path}: views {episode.view_names}, the policy takes {tuple(views)}")
        if episode.succeeded:
            episodes.append(episode)
        if max_demos is not None and len(episodes) >= max_demos:
            break
    if not episodes:
        raise ValueError(f"{directory}: no successful episodes")
    return episodes


def split_episodes(
    episodes: Sequence[Episode], val_fraction: float, seed: int
) -> tuple[list[Episode], list[Episode]]:
    """Train and validation episodes: whole episodes held out, at least one kept for training."""
    order = np.random.default_rng(seed).permutation(len(episodes))
    held = min(round(val_fraction * len(episodes)), len(episodes) - 1)
    return [episodes[i] for i in order[held:]], [episodes[i] for i in order[:held]]


def random_shift(images: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ augmentation of uint8 ``[B, V, H, W, 3]``: pad by ``pixels`` (edges replicated), crop
    back at a random offset per image."""
    if pixels == 0:
        return images
    batch, views, height, width, _ = images.shape
    flat = images.reshape(batch * views, height, width, 3).permute(0, 3, 1, 2).float()
    padded = functional.pad(flat, (pixels, pixels, pixels, pixels), mode="replicate")
    offsets = torch.randint(0, 2 * pixels + 1, (batch * views, 2), generator=generator)
    crops = [padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets.tolist())]
    shifted = torch.stack(crops).round().to(torch.uint8)
    return shifted.permute(0, 2, 3, 1).reshape(batch, views, height, width, 3)


# ---- training ------------------------------------------------------------------------------


def batches(size: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Index batches over ``size`` items: shuffled by ``generator``, in order without one."""
    order = torch.randperm(size, generator=generator) if generator is not None else torch.arange(size)
    return [order[start : start + batch_size] for start in range(0, size, batch_size)]


def evaluate_loss(model: SimBasePolicy, frames: DemoFrames, batch_size: int = 256) -> float:
    """The training loss (normalized action units) over ``frames``."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for index in batches(len(frames), batch_size, None):
            total += _loss(model, frames, index).item() * len(index)
    return total / len(frames)


def _loss(
    model: SimBasePolicy,
    frames: DemoFrames,
    index: torch.Tensor,
    augment: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    images = torch.from_numpy(frames.views[index.numpy()])
    if augment is not None:
        images = augment(images)
    proprio = torch.from_numpy(frames.proprio[index.numpy()])
    target = (torch.from_numpy(frames.chunks[index.numpy()]) - model.action_mean) / model.action_std
    prediction = model.normalized(images, proprio)
    if model.config.loss == "l1":
        return functional.l1_loss(prediction, target)
    return functional.mse_loss(prediction, target)


def fit(
    model: SimBasePolicy,
    train: DemoFrames,
    val: DemoFrames | None,
    *,
    log: Callable[[str], None] = lambda _: None,
) -> list[float]:
    """Train ``model`` (statistics already set) on ``train``; return the mean loss of each epoch."""
    config = model.config
    torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    losses = []
    for epoch in range(config.epochs):
        model.train()
        start, total = time.monotonic(), 0.0
        for index in batches(len(train), config.batch_size, generator):
            loss = _loss(model, train, index, lambda x: random_shift(x, config.shift_pixels, generator))
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
            optimizer.step()
            total += loss.item() * len(index)
        losses.append(total / len(train))
        message = f"epoch {epoch + 1}/{config.epochs}: train loss {losses[-1]:.4f}"
        if val is not None and len(val):
            message += f", validation loss {evaluate_loss(model, val):.4f}"
        log(f"{message} ({time.monotonic() - start:.0f} s)")
    model.eval()
    return losses


def export_onnx(model: SimBasePolicy, path: Path, height: int, width: int) -> None:
    """Write ``model`` as ONNX (the module docstring's contract; B dynamic) with its config as
    metadata (``config``, ``views``)."""
    model.eval()
    views = len(model.config.views)
    example = (
        torch.zeros((1, views, height, width, 3), dtype=torch.uint8),
        torch.zeros((1, PROPRIO_DIM), dtype=torch.float32),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        example,
        str(path),
        input_names=[IMAGES, PROPRIO],
        output_names=[ACTIONS],
        dynamic_axes={IMAGES: {0: "batch"}, PROPRIO: {0: "batch"}, ACTIONS: {0: "batch"}},
        dynamo=False,
    )
    exported = onnx.load(str(path))
    for key, value in (("config", model.config.to_json()), ("views", ",".join(model.config.views))):
        exported.metadata_props.add(key=key, value=value)
    onnx.save(exported, str(path))


@dataclass(frozen=True)
class TrainingReport:
    demos: int
    """Successful demonstrations used (train + validation)."""
    train_frames: int
    val_frames: int
    epoch_losses: list[float]
    val_loss: float | None
    seconds: float


def train_base_policy(
    demos: Path, out: Path, config: BasePolicyConfig | None = None, *, log: Callable[[str], None] = print
) -> TrainingReport:
    """Load the successful demonstrations in ``demos``, train, export to ``out`` (ONNX)."""
    config = config or BasePolicyConfig()
    start = time.monotonic()
    torch.manual_seed(config.seed)
    episodes = load_demonstrations(demos, config.views, config.max_demos)
    train_episodes, val_episodes = split_episodes(episodes, config.val_fraction, config.seed)
    train = episode_frames(train_episodes, config.chunk_horizon)
    val = episode_frames(val_episodes, config.chunk_horizon) if val_episodes else None
    log(
        f"{len(episodes)} demonstrations: {len(train)} training frames from {len(train_episodes)}, "
        f"{len(val) if val else 0} validation frames from {len(val_episodes)}"
    )
    model = SimBasePolicy(config)
    model.set_statistics(train.proprio, train.chunks.reshape(-1, ACTION_DIM))
    losses = fit(model, train, val, log=log)
    val_loss = evaluate_loss(model, val) if val is not None else None
    height, width = train.views.shape[2:4]
    export_onnx(model, out, height, width)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return TrainingReport(
        demos=len(episodes),
        train_frames=len(train),
        val_frames=len(val) if val is not None else 0,
        epoch_losses=losses,
        val_loss=val_loss,
        seconds=time.monotonic() - start,
    )
