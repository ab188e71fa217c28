"""The success classifier of the simulated franka_pick_cube, trained on the simulator's privileged labels.

Every recorded frame (expert demonstrations and policy rollouts alike, successful or not) is
labelled by the privileged success signal of its tick: the cube's centre at least 4 cm above its
resting height. The model is the project's :class:`~pld_ros.models.success_classifier.SuccessClassifier`
with one head, exported with its ONNX contract (``images`` uint8 ``[B, V, H, W, 3]`` ->
``probabilities`` ``[B, 1]``). Whole episodes are held out to report precision and recall on
frames of episodes the model never saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional

from pld_ros.models.resnet10 import ResNet10Config
from pld_ros.models.success_classifier import SuccessClassifier, SuccessClassifierConfig, export_onnx
from pld_ros.training.rollouts import Episode, episode_files, load_episode
from pld_ros.training.sim_base_policy import batches, random_shift, split_episodes


@dataclass(frozen=True)
class ClassifierTrainingConfig:
    """Hyperparameters of the classifier and of its training."""

    model: SuccessClassifierConfig = field(
        default_factory=lambda: SuccessClassifierConfig(
            encoder=ResNet10Config(widths=(16, 32, 64, 128), embedding_dim=64), hidden_dim=128
        )
    )
    """The classifier: a quarter of the paper widths, 64-d embeddings, a 128-unit MLP; "cube in
    the air or not" needs little capacity, and the reward node runs it every tick on the CPU."""
    views: tuple[str, ...] = ("wrist", "side")
    """Camera views in input order (the profile's ``reward.views``)."""
    val_fraction: float = 0.2
    """Fraction of the episodes held out (whole episodes) for precision and recall."""
    epochs: int = 4
    """Passes over the training frames."""
    batch_size: int = 64
    """Frames per gradient step."""
    learning_rate: float = 3e-4
    """AdamW learning rate (constant)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    shift_pixels: int = 4
    """Random-shift augmentation (see :func:`~pld_ros.training.sim_base_policy.random_shift`); 0: none."""
    threshold: float = 0.5
    """Probability above which a frame counts as success for the reported precision and recall
    (the profile's stage threshold, 0.9, is reported too)."""
    seed: int = 0
    """Seed of the initialization, the split and the batch order."""
    threads: int = 2
    """torch CPU threads for training."""

    def __post_init__(self) -> None:
        if self.model.num_heads != 1 or self.model.num_views != len(self.views):
            raise ValueError("the classifier needs one head and one input per view")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if min(self.epochs, self.batch_size) <= 0:
            raise ValueError("epochs and batch_size must be positive")

    def with_updates(self, **changes: object) -> ClassifierTrainingConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LabelledFrames:
    views: npt.NDArray[np.uint8]
    """N x V x H x W x 3."""
    labels: npt.NDArray[np.bool_]
    """N: privileged success at that frame."""

    def __len__(self) -> int:
        return len(self.labels)


def labelled_frames(episodes: Sequence[Episode]) -> LabelledFrames:
    if not episodes:
        raise ValueError("no episodes")
    return LabelledFrames(
        views=np.concatenate([e.views for e in episodes]),
        labels=np.concatenate([e.success for e in episodes]),
    )


def load_episodes(directories: Sequence[Path], views: Sequence[str]) -> list[Episode]:
    """Every episode in ``directories`` (episodes cut short by an arm fault too: their frames are
    labelled like any other), checked to hold ``views`` in that order."""
    episodes = []
    for directory in directories:
        for path in episode_files(directory):
            episode = load_episode(path)
            if episode.view_names != tuple(views):
                raise ValueError(f"{path}: views {episode.view_names}, the classifier takes {tuple(views)}")
            episodes.append(episode)
    if not episodes:
        raise ValueError(f"no episodes in {', '.join(map(str, directories))}")
    return episodes


@dataclass(frozen=True)
class Scores:
    """Frame-level detection quality at one threshold."""

    threshold: float
    precision: float
    """Of the frames called success, the fraction that were (1.0 when none were called)."""
    recall: float
    """Of the success frames, the fraction called success (1.0 when there were none)."""
    accuracy: float


def scores(probabilities: npt.NDArray[np.float32], labels: npt.NDArray[np.bool_], threshold: float) -> Scores:
    called = probabilities >= threshold
    true_positives = int(np.sum(called & labels))
    return Scores(
        threshold=threshold,
        precision=true_positives / max(int(called.sum()), 1) if called.any() else 1.0,
        recall=true_positives / max(int(labels.sum()), 1) if labels.any() else 1.0,
        accuracy=float(np.mean(called == labels)),
    )


def predict(
    model: SuccessClassifier, frames: LabelledFrames, batch_size: int = 256
) -> npt.NDArray[np.float32]:
    """Success probabilities of every frame."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            images = torch.from_numpy(frames.views[start : start + batch_size])
            out.append(model(images)[:, 0].numpy())
    return np.concatenate(out).astype(np.float32)


def fit(
    model: SuccessClassifier,
    train: LabelledFrames,
    config: ClassifierTrainingConfig,
    *,
    log: Callable[[str], None] = lambda _: None,
) -> list[float]:
    """Train with class-balanced binary cross-entropy; return each epoch's mean loss."""
    torch.set_num_threads(config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    positives = max(int(train.labels.sum()), 1)
    # Success frames are the minority (the last ticks of successful episodes): weigh them up.
    pos_weight = torch.tensor([(len(train) - positives) / positives], dtype=torch.float32)
    labels = torch.from_numpy(train.labels.astype(np.float32))
    losses = []
    for epoch in range(config.epochs):
        model.train()
        start, total = time.monotonic(), 0.0
        for index in batches(len(train), config.batch_size, generator):
            images = random_shift(
                torch.from_numpy(train.views[index.numpy()]), config.shift_pixels, generator
            )
            loss = functional.binary_cross_entropy_with_logits(
                model.forward_logits(images)[:, 0], labels[index], pos_weight=pos_weight
            )
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
            optimizer.step()
            total += loss.item() * len(index)
        losses.append(total / len(train))
        log(f"epoch {epoch + 1}/{config.epochs}: loss {losses[-1]:.4f} ({time.monotonic() - start:.0f} s)")
    model.eval()
    return losses


@dataclass(frozen=True)
class ClassifierReport:
    train_frames: int
    train_positives: int
    val_frames: int
    val_positives: int
    val_episodes: int
    scores: list[Scores]
    """Held-out scores at the config's threshold and at the profile's stage threshold (0.9)."""


def train_success_classifier(
    directories: Sequence[Path],
    out: Path,
    config: ClassifierTrainingConfig | None = None,
    *,
    log: Callable[[str], None] = print,
) -> ClassifierReport:
    """Train on the episodes of ``directories``, report held-out precision / recall, export to ONNX."""
    config = config or ClassifierTrainingConfig()
    torch.manual_seed(config.seed)
    episodes = load_episodes(directories, config.views)
    train_episodes, val_episodes = split_episodes(episodes, config.val_fraction, config.seed)
    train = labelled_frames(train_episodes)
    val = labelled_frames(val_episodes) if val_episodes else None
    log(
        f"{len(train)} training frames ({int(train.labels.sum())} success) from {len(train_episodes)} "
        f"episodes; {len(val) if val else 0} held-out frames from {len(val_episodes)} episodes"
    )
    model = SuccessClassifier(config.model)
    fit(model, train, config, log=log)
    results: list[Scores] = []
    if val is not None:
        probabilities = predict(model, val)
        for threshold in sorted({config.threshold, 0.9}):
            result = scores(probabilities, val.labels, threshold)
            results.append(result)
            log(
                f"held-out at {threshold:.2f}: precision {result.precision:.3f}, recall {result.recall:.3f}, "
                f"accuracy {result.accuracy:.3f} ({int(val.labels.sum())} success frames of {len(val)})"
            )
    height, width = train.views.shape[2:4]
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model, out, len(config.views), height, width)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return ClassifierReport(
        train_frames=len(train),
        train_positives=int(train.labels.sum()),
        val_frames=len(val) if val is not None else 0,
        val_positives=int(val.labels.sum()) if val is not None else 0,
        val_episodes=len(val_episodes),
        scores=results,
    )
