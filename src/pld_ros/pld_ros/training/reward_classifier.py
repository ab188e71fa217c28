"""Training the reward (success) classifier with hard-negative mining, and scoring it.

The model is :class:`~pld_ros.models.success_classifier.SuccessClassifier` (ResNet-10 shared by
the views + a 3-layer MLP, one sigmoid head per stage), trained on the labelled frames of
:mod:`pld_ros.training.reward_dataset` with class-balanced binary cross-entropy (unlabelled
entries masked out) and augmentation: random shift (DrQ, :mod:`pld_ros.learning.augmentation`)
and colour jitter, each drawn per image and view.

Splits are drawn by episode, never by frame (neighbouring frames are near copies, so a frame split
would leak): :func:`split_episodes` holds out a *test* split (the reported held-out precision and
recall), a *validation* split (on which the threshold is chosen), and keeps a *reserve* of
episodes out of the first training run; the training and reserve episodes together are the
*mining pool*. Episodes with and without a positive frame are spread over the splits in
proportion.

Hard-negative mining, as PLD does to reach 99 % precision: after the first training run, the
negatives of the mining pool that the model calls positive at the operating threshold (false
positives) are added to the training samples, each :attr:`RewardTrainingConfig.hard_negative_repeats`
times, the model is fine-tuned, the threshold chosen again; this repeats until the test split's
precision at the threshold meets the target, no false positive is left in the pool, or
:attr:`RewardTrainingConfig.max_rounds` rounds have run. Each round is logged. Because the stopping
rule looks at the test split, the final round's test precision is the one that met the target
(a mild selection over at most ``max_rounds`` + 1 rounds); the validation split, which chose the
threshold, never sees a gradient.

The operating threshold of each head is the lowest one at which the validation precision meets
the target at that threshold and every higher one, placed midway (in logit space) in the gap to
the next validation frame (:func:`choose_threshold`). A frame is called positive when its
probability is *above* the threshold, as the supervisor's stage machine counts it. The thresholds
go into the ONNX file's metadata (:func:`export_reward_model`, :class:`RewardModelMetadata`),
which :class:`OnnxRewardModel` reads back for evaluation.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import onnx
import torch
from torch.nn import functional

from pld_ros.core.atomic_file import atomic_write
from pld_ros.learning.augmentation import random_shift
from pld_ros.models.resnet10 import ResNet10Config
from pld_ros.models.success_classifier import (
    INPUT_NAME,
    OUTPUT_NAME,
    SuccessClassifier,
    SuccessClassifierConfig,
    export_onnx,
)
from pld_ros.policies.onnx_runtime import inference_session
from pld_ros.training.reward_dataset import (
    NEGATIVE,
    POSITIVE,
    UNLABELLED,
    LabelledEpisode,
    disagreement,
    guard_boundaries,
)
from pld_ros.training.reward_metadata import RewardModelMetadata
from pld_ros.training.sim_base_policy import batches

Log = Callable[[str], None]

THRESHOLD_RANGE = (1e-6, 1.0 - 1e-6)
"""A chosen threshold is clipped into this range: the profile's ``Stage.threshold`` must lie in (0, 1)."""
PREDICT_BATCH = 256
"""Frames per forward pass when scoring (memory, not results)."""


@dataclass(frozen=True)
class RewardTrainingConfig:
    """Hyperparameters of the classifier, of its training and of the mining."""

    model: SuccessClassifierConfig = field(
        default_factory=lambda: SuccessClassifierConfig(
            encoder=ResNet10Config(widths=(16, 32, 64, 128), embedding_dim=64), hidden_dim=128
        )
    )
    """The classifier: a quarter of the paper widths, 64-d embeddings, a 128-unit MLP; "task done
    or not" needs little capacity, and the reward node runs it every tick on the CPU.
    ``num_views`` and ``num_heads`` are taken from the data."""
    test_fraction: float = 0.15
    """Episodes held out for the reported precision and recall (at least one)."""
    val_fraction: float = 0.15
    """Episodes held out to choose the threshold on (at least one)."""
    reserve_fraction: float = 0.25
    """Of the remaining episodes, the fraction kept out of the first training run: frames the
    model has not fitted, where its false positives show as they would on new rollouts."""
    precision_target: float = 0.99
    """Precision the threshold is chosen for, and the test precision mining stops at."""
    boundary_ticks: int = 1
    """Frames on each side of a label change that take no part in training, threshold choice,
    mining or the stopping rule (:func:`~pld_ros.training.reward_dataset.guard_boundaries`). The
    final scores are reported on all frames too. In franka_pick_cube every false positive of a
    model trained without it was the tick or two before the cube crossed the 4 cm mark, and mining
    those frames lowered the held-out precision instead of raising it."""
    epochs: int = 4
    """Passes over the training samples in the first run."""
    mining_epochs: int = 2
    """Passes over the training samples (with the mined negatives) when fine-tuning in a round."""
    max_rounds: int = 3
    """Mining rounds after the first run, at most."""
    hard_negative_repeats: int = 4
    """Times each mined false positive is added to the training samples (oversampling: a few
    hard negatives among thousands of easy frames would hardly move the loss otherwise)."""
    batch_size: int = 64
    """Frames per gradient step."""
    learning_rate: float = 3e-4
    """AdamW learning rate (constant)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    shift_pixels: int = 4
    """Random-shift augmentation: up to this many pixels in each direction; 0: none."""
    colour_jitter: float = 0.1
    """Colour jitter: brightness, contrast and saturation each scaled by a factor drawn uniformly
    from [1 - x, 1 + x] per image and view (real cameras' exposure and white balance drift); 0: none."""
    seed: int = 0
    """Seed of the initialization, the split, the augmentation and the batch order."""
    threads: int = 2
    """torch CPU threads for training."""

    def __post_init__(self) -> None:
        for name in ("test_fraction", "val_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.reserve_fraction < 1.0:
            raise ValueError(f"reserve_fraction must be in [0, 1), got {self.reserve_fraction}")
        if not 0.0 < self.precision_target <= 1.0:
            raise ValueError(f"precision_target must be in (0, 1], got {self.precision_target}")
        if min(self.epochs, self.batch_size, self.hard_negative_repeats) <= 0:
            raise ValueError("epochs, batch_size and hard_negative_repeats must be positive")
        if min(self.mining_epochs, self.max_rounds, self.shift_pixels, self.boundary_ticks) < 0:
            raise ValueError(
                "mining_epochs, max_rounds, shift_pixels and boundary_ticks must not be negative"
            )
        if not 0.0 <= self.colour_jitter < 1.0:
            raise ValueError(f"colour_jitter must be in [0, 1), got {self.colour_jitter}")

    def with_updates(self, **changes: object) -> RewardTrainingConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]


# ---- frames and splits ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FrameSet:
    """The frames of several episodes, concatenated; splits and samples index into it."""

    views: npt.NDArray[np.uint8]
    """N x V x H x W x 3."""
    labels: npt.NDArray[np.int8]
    """N x S (POSITIVE, NEGATIVE, UNLABELLED), label changes guarded (``boundary_ticks``)."""
    all_labels: npt.NDArray[np.int8]
    """N x S as stored, every labelled frame counted."""
    episode: npt.NDArray[np.int64]
    """N: index of the frame's episode in ``episode_ids``."""
    episode_ids: tuple[str, ...]
    view_names: tuple[str, ...]
    heads: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def frames_of(self, episode_ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Indices of the frames of ``episode_ids``."""
        chosen = set(episode_ids)
        wanted = [i for i, name in enumerate(self.episode_ids) if name in chosen]
        return np.flatnonzero(np.isin(self.episode, wanted)).astype(np.int64)


def frame_set(episodes: Sequence[LabelledEpisode], boundary_ticks: int = 0) -> FrameSet:
    """Concatenate ``episodes``, guarding ``boundary_ticks`` frames at each label change; ValueError
    unless they agree on views, heads and image size."""
    if not episodes:
        raise ValueError("no episodes")
    for episode in episodes[1:]:
        why = disagreement(episode, episodes[0])
        if why:
            raise ValueError(f"episode {episode.episode_id}: {why}")
    return FrameSet(
        views=np.concatenate([e.views for e in episodes]),
        labels=np.concatenate([guard_boundaries(e.labels, boundary_ticks) for e in episodes]),
        all_labels=np.concatenate([e.labels for e in episodes]),
        episode=np.repeat(np.arange(len(episodes), dtype=np.int64), [len(e) for e in episodes]),
        episode_ids=tuple(e.episode_id for e in episodes),
        view_names=episodes[0].view_names,
        heads=episodes[0].heads,
    )


@dataclass(frozen=True)
class EpisodeSplit:
    """Episode ids of each split; every episode is in exactly one."""

    train: tuple[str, ...]
    reserve: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def pool(self) -> tuple[str, ...]:
        """The mining pool: every episode outside the validation and test splits."""
        return self.train + self.reserve


def split_episodes(episodes: Sequence[LabelledEpisode], config: RewardTrainingConfig) -> EpisodeSplit:
    """Draw the splits by episode (module docstring): test, validation, reserve, the rest training.
    Episodes with a positive frame and those without are interleaved before cutting, so each split
    gets about its share of both."""
    count = len(episodes)
    test = max(1, round(config.test_fraction * count))
    val = max(1, round(config.val_fraction * count))
    if count - test - val < 1:
        raise ValueError(
            f"{count} episodes: too few for a test, a validation and a training split (at least 3)"
        )
    reserve = min(round(config.reserve_fraction * (count - test - val)), count - test - val - 1)
    rng = np.random.default_rng(config.seed)
    has_positive = np.array([bool((e.labels == POSITIVE).any()) for e in episodes])
    # Each group shuffled, then ordered by relative rank within its group: any prefix of the order
    # holds both groups in proportion to their sizes.
    keys = np.empty(count)
    for group in (True, False):
        members = np.flatnonzero(has_positive == group)
        keys[rng.permutation(members)] = (np.arange(len(members)) + rng.uniform(0.0, 1.0)) / max(
            len(members), 1
        )
    order = [episodes[i].episode_id for i in np.argsort(keys, kind="stable")]
    cuts = np.cumsum([test, val, reserve])
    return EpisodeSplit(
        test=tuple(order[: cuts[0]]),
        val=tuple(order[cuts[0] : cuts[1]]),
        reserve=tuple(order[cuts[1] : cuts[2]]),
        train=tuple(order[cuts[2] :]),
    )


# ---- scores --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Confusion:
    """Frame counts of one head at one threshold (a frame is called positive when its probability
    is above the threshold); unlabelled frames are not counted."""

    threshold: float
    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int

    @property
    def precision(self) -> float:
        """Of the frames called positive, the fraction that are; NaN when none was called."""
        called = self.true_positives + self.false_positives
        return self.true_positives / called if called else float("nan")

    @property
    def recall(self) -> float:
        """Of the positive frames, the fraction called positive; NaN when there are none."""
        positives = self.true_positives + self.false_negatives
        return self.true_positives / positives if positives else float("nan")

    def meets(self, target: float) -> bool:
        """Precision at least ``target`` (vacuously true when nothing was called)."""
        return self.false_positives == 0 or self.precision >= target


def confusion(
    probabilities: npt.NDArray[np.float32], labels: npt.NDArray[np.int8], threshold: float
) -> Confusion:
    """The confusion counts of one head: ``probabilities`` and ``labels`` of the same frames."""
    called = probabilities > threshold
    positive, negative = labels == POSITIVE, labels == NEGATIVE
    return Confusion(
        threshold=threshold,
        true_positives=int(np.sum(called & positive)),
        false_positives=int(np.sum(called & negative)),
        false_negatives=int(np.sum(~called & positive)),
        true_negatives=int(np.sum(~called & negative)),
    )


def choose_threshold(
    probabilities: npt.NDArray[np.float32], labels: npt.NDArray[np.int8], target: float
) -> float:
    """The lowest threshold at which the precision of one head meets ``target`` at that threshold
    and at every higher one (precision is not monotonic in the threshold: a lone dip above the
    chosen point would otherwise be ignored). ValueError when the frames hold no positive.

    Candidates are the labelled frames' probabilities, each calling the frames strictly above it;
    where nothing is called the target counts as met, so there is always an answer (at worst one
    that calls nothing: recall 0). Every threshold from the chosen candidate up to the next one
    calls the same frames; the one returned lies midway between the two in logit space, so that
    new frames a little above the highest negative seen, or a little below the lowest positive
    called, are not decided by a hair (when the validation negatives are all easy, the candidate
    itself would sit right on top of them)."""
    labelled = labels != UNLABELLED
    scores, positive = probabilities[labelled].astype(np.float64), labels[labelled] == POSITIVE
    if not positive.any():
        raise ValueError("no positive frames to choose a threshold on")
    candidates = np.unique(scores)
    ordered = np.sort(scores)
    called = len(ordered) - np.searchsorted(ordered, candidates, side="right")
    missed = np.searchsorted(np.sort(scores[positive]), candidates, side="right")
    hits = int(positive.sum()) - missed
    precision = np.where(called > 0, hits / np.maximum(called, 1), 1.0)
    # Worst precision at this candidate or any higher one.
    worst_above = np.minimum.accumulate(precision[::-1])[::-1]
    chosen = int(np.flatnonzero(worst_above >= target)[0])
    low, high = np.clip(candidates[chosen : chosen + 2], *THRESHOLD_RANGE)[[0, -1]]
    return float(_sigmoid((_logit(low) + _logit(high)) / 2.0))


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


# ---- training ------------------------------------------------------------------------------


def colour_jitter(images: torch.Tensor, strength: float) -> torch.Tensor:
    """uint8 ``[B, V, H, W, 3]`` with brightness, contrast and saturation each scaled by a factor in
    ``[1 - strength, 1 + strength]``, drawn per image and view (torch's global generator)."""
    if strength == 0.0:
        return images
    batch, views = images.shape[:2]
    factors = 1.0 + strength * (2.0 * torch.rand((3, batch, views, 1, 1, 1)) - 1.0)
    pixels = images.float() * factors[0]
    mean = pixels.mean(dim=(2, 3, 4), keepdim=True)
    pixels = (pixels - mean) * factors[1] + mean
    grey = pixels.mean(dim=4, keepdim=True)
    pixels = (pixels - grey) * factors[2] + grey
    return pixels.clamp(0.0, 255.0).round().to(torch.uint8)


def predict(
    model: SuccessClassifier, frames: FrameSet, indices: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    """Probabilities ``[len(indices), heads]`` of the frames ``indices``."""
    model.eval()
    out = [np.zeros((0, model.config.num_heads), np.float32)]
    with torch.no_grad():
        for start in range(0, len(indices), PREDICT_BATCH):
            images = torch.from_numpy(frames.views[indices[start : start + PREDICT_BATCH]])
            out.append(model(images).numpy())
    return np.concatenate(out).astype(np.float32)


def positive_weights(labels: npt.NDArray[np.int8]) -> torch.Tensor:
    """Per head, negatives / positives among the labelled frames: the BCE weight of a positive that
    balances the classes (success frames are the minority: the last ticks of successful episodes)."""
    positives = (labels == POSITIVE).sum(axis=0)
    negatives = (labels == NEGATIVE).sum(axis=0)
    return torch.from_numpy((negatives / np.maximum(positives, 1)).astype(np.float32))


def fit(
    model: SuccessClassifier,
    frames: FrameSet,
    samples: npt.NDArray[np.int64],
    epochs: int,
    pos_weight: torch.Tensor,
    config: RewardTrainingConfig,
    *,
    log: Log = lambda _: None,
) -> list[float]:
    """Train on the frames ``samples`` (repeats allowed) for ``epochs``; each epoch's mean loss."""
    # Seeded by the sample count too: each mining round gets its own batch order.
    generator = torch.Generator().manual_seed(config.seed + len(samples))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    losses = []
    for epoch in range(epochs):
        model.train()
        start, total = time.monotonic(), 0.0
        for batch in batches(len(samples), config.batch_size, generator):
            index = samples[batch.numpy()]
            images = torch.from_numpy(frames.views[index])
            images = colour_jitter(random_shift(images, config.shift_pixels), config.colour_jitter)
            labels = torch.from_numpy(frames.labels[index])
            mask = (labels != UNLABELLED).float()
            loss = functional.binary_cross_entropy_with_logits(
                model.forward_logits(images),
                (labels == POSITIVE).float(),
                weight=mask,
                pos_weight=pos_weight,
                reduction="sum",
            ) / mask.sum().clamp(min=1.0)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
            optimizer.step()
            total += loss.item() * len(index)
        losses.append(total / max(len(samples), 1))
        log(f"  epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f} ({time.monotonic() - start:.0f} s)")
    model.eval()
    return losses


@dataclass(frozen=True)
class RoundReport:
    """One training run (round 0) or mining round."""

    round: int
    mined: int
    """False positives of the mining pool at the previous round's thresholds added this round,
    each ``hard_negative_repeats`` times (one mined in an earlier round and still called positive
    is added again); 0 in round 0."""
    samples: int
    """Training samples of this round (with repeats)."""
    thresholds: tuple[float, ...]
    """Per head, chosen on the validation split."""
    val: tuple[Confusion, ...]
    test: tuple[Confusion, ...]
    """On the labels the training uses (label changes guarded)."""
    pool_false_positives: int
    """Negatives of the mining pool called positive at this round's thresholds (all heads)."""
    seconds: float


@dataclass(frozen=True)
class TrainingResult:
    model: SuccessClassifier
    heads: tuple[str, ...]
    view_names: tuple[str, ...]
    image_shape: tuple[int, int]
    split: EpisodeSplit
    rounds: list[RoundReport]
    stop_reason: str
    precision_target: float
    boundary_ticks: int
    test_all_frames: tuple[Confusion, ...]
    """The final model on the test split at its thresholds, every labelled frame counted (the
    rounds' scores leave out the frames at label changes, ``boundary_ticks``)."""

    @property
    def thresholds(self) -> tuple[float, ...]:
        return self.rounds[-1].thresholds


def format_confusion(head: str, result: Confusion, split: str = "") -> str:
    """One line: precision, recall and the counts behind them, of ``head`` (on ``split``)."""

    def percent(value: float) -> str:
        return "n/a" if np.isnan(value) else f"{100.0 * value:.2f} %"

    where = f"{head} {split}" if split else head
    return (
        f"{where} at {result.threshold:.4f}: precision {percent(result.precision)}, "
        f"recall {percent(result.recall)} (TP {result.true_positives}, FP {result.false_positives}, "
        f"FN {result.false_negatives}, TN {result.true_negatives})"
    )


def train_reward_classifier(
    episodes: Sequence[LabelledEpisode], config: RewardTrainingConfig | None = None, *, log: Log = print
) -> TrainingResult:
    """Split by episode, train, mine hard negatives until the test precision meets the target (module
    docstring); every round is logged."""
    config = config or RewardTrainingConfig()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    frames = frame_set(episodes, config.boundary_ticks)
    split = split_episodes(episodes, config)
    train, val, test = (
        frames.frames_of(split.train),
        frames.frames_of(split.val),
        frames.frames_of(split.test),
    )
    pool = frames.frames_of(split.pool)
    heads = frames.heads
    for name, indices in (("validation", val), ("training", train)):
        missing = [h for i, h in enumerate(heads) if not (frames.labels[indices, i] == POSITIVE).any()]
        if missing:
            raise ValueError(
                f"the {name} split has no positive frame of head(s) {', '.join(missing)}: "
                "more episodes with successes are needed"
            )
    log(
        f"{len(episodes)} episodes, {len(frames)} frames; split by episode: training {len(split.train)} "
        f"({len(train)} frames), reserve {len(split.reserve)}, validation {len(split.val)} ({len(val)}), "
        f"test {len(split.test)} ({len(test)}); mining pool {len(pool)} frames; "
        f"{int(np.sum((frames.labels == UNLABELLED) & (frames.all_labels != UNLABELLED)))} label entries "
        f"within {config.boundary_ticks} frame(s) of a label change left out"
    )
    model = SuccessClassifier(replace(config.model, num_views=len(frames.view_names), num_heads=len(heads)))
    pos_weight = positive_weights(frames.labels[train])
    samples = train
    rounds: list[RoundReport] = []
    mined = 0
    stop_reason = f"{config.max_rounds} mining rounds done"
    for number in range(config.max_rounds + 1):
        start = time.monotonic()
        log(f"round {number}: {'training' if number == 0 else 'fine-tuning'} on {len(samples)} samples")
        fit(
            model,
            frames,
            samples,
            config.epochs if number == 0 else config.mining_epochs,
            pos_weight,
            config,
            log=log,
        )
        val_probabilities = predict(model, frames, val)
        thresholds = tuple(
            choose_threshold(val_probabilities[:, h], frames.labels[val, h], config.precision_target)
            for h in range(len(heads))
        )
        test_probabilities = predict(model, frames, test)
        pool_probabilities = predict(model, frames, pool)
        false_positive = np.zeros(len(pool), dtype=bool)
        for h, threshold in enumerate(thresholds):
            false_positive |= (pool_probabilities[:, h] > threshold) & (frames.labels[pool, h] == NEGATIVE)
        report = RoundReport(
            round=number,
            mined=mined,
            samples=len(samples),
            thresholds=thresholds,
            val=tuple(
                confusion(val_probabilities[:, h], frames.labels[val, h], t) for h, t in enumerate(thresholds)
            ),
            test=tuple(
                confusion(test_probabilities[:, h], frames.labels[test, h], t)
                for h, t in enumerate(thresholds)
            ),
            pool_false_positives=int(false_positive.sum()),
            seconds=time.monotonic() - start,
        )
        rounds.append(report)
        for h, head in enumerate(heads):
            log("  " + format_confusion(head, report.val[h], "validation"))
            log("  " + format_confusion(head, report.test[h], "test (held out)"))
        log(
            f"  round {number}: {report.pool_false_positives} false positives in the mining pool; "
            f"{report.seconds:.0f} s"
        )
        if all(result.meets(config.precision_target) for result in report.test):
            stop_reason = f"held-out precision meets the target {config.precision_target:g}"
            break
        if not false_positive.any():
            stop_reason = "no false positive left in the mining pool"
            break
        if number == config.max_rounds:
            break
        hard = pool[false_positive]
        mined = len(hard)
        samples = np.concatenate([samples, np.repeat(hard, config.hard_negative_repeats)])
    log(f"stopped after round {rounds[-1].round}: {stop_reason}")
    # test_probabilities are the last round's: of the model returned.
    test_all_frames = tuple(
        confusion(test_probabilities[:, h], frames.all_labels[test, h], t)
        for h, t in enumerate(rounds[-1].thresholds)
    )
    for head, result in zip(heads, test_all_frames, strict=True):
        log(format_confusion(head, result, "test (held out), all frames"))
    return TrainingResult(
        model=model,
        heads=heads,
        view_names=frames.view_names,
        image_shape=(int(frames.views.shape[2]), int(frames.views.shape[3])),
        split=split,
        rounds=rounds,
        stop_reason=stop_reason,
        precision_target=config.precision_target,
        boundary_ticks=config.boundary_ticks,
        test_all_frames=test_all_frames,
    )


# ---- the model file ------------------------------------------------------------------------


def _training_summary(result: TrainingResult) -> str:
    return json.dumps(
        {
            "split": {
                "train": list(result.split.train),
                "reserve": list(result.split.reserve),
                "validation": list(result.split.val),
            },
            "stop_reason": result.stop_reason,
            "rounds": [
                {
                    "round": r.round,
                    "mined": r.mined,
                    "samples": r.samples,
                    "thresholds": list(r.thresholds),
                    "test_precision": [c.precision for c in r.test],
                    "test_recall": [c.recall for c in r.test],
                    "seconds": round(r.seconds, 1),
                }
                for r in result.rounds
            ],
        }
    )


def export_reward_model(result: TrainingResult, path: Path) -> Path:
    """Write the trained classifier as ONNX (the contract of
    :mod:`pld_ros.models.success_classifier`) with :class:`RewardModelMetadata`, atomically: a
    killed export leaves the previous file or none."""
    metadata = RewardModelMetadata(
        views=result.view_names,
        heads=result.heads,
        thresholds=result.thresholds,
        precision_target=result.precision_target,
        boundary_ticks=result.boundary_ticks,
        held_out_episodes=result.split.test,
        training=_training_summary(result),
    )
    with tempfile.TemporaryDirectory() as scratch:
        exported = Path(scratch) / "model.onnx"
        export_onnx(result.model, exported, len(result.view_names), *result.image_shape)
        model = onnx.load(str(exported))
    model.metadata_props.extend(
        onnx.StringStringEntryProto(key=key, value=value) for key, value in metadata.props().items()
    )
    model.metadata_props.add(key="config", value=result.model.config.to_json())

    def write(out: BinaryIO) -> None:
        out.write(model.SerializeToString())

    return atomic_write(path, write)


# ---- evaluation ----------------------------------------------------------------------------

SWEEP_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
"""Thresholds of the sweep table (the model's own threshold is added)."""
PLOT_POINTS = 199
"""Thresholds of the sweep plot, evenly spaced in logit space between :data:`PLOT_LOGIT_RANGE`
(thresholds near 1, where a precision target of 99 % puts them, get their share of points)."""
PLOT_LOGIT_RANGE = 8.0
"""The sweep plot covers the thresholds sigmoid(-x) to sigmoid(x), 0.0003 to 0.9997."""


class OnnxRewardModel:
    """An exported classifier run by onnxruntime, as the reward node's ``onnx`` backend runs it,
    with its :class:`RewardModelMetadata` (None for a model without it)."""

    def __init__(self, path: Path, threads: int = 2) -> None:
        if not path.is_file():
            raise ValueError(f"{path}: no such model file")
        try:
            self._session = inference_session(str(path), threads=threads, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise ValueError(f"{path}: not a loadable ONNX model: {exc}") from None
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
            raise ValueError(
                f"{path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
                f"got {inputs} and {outputs}"
            )
        self.input_shape = tuple(self._session.get_inputs()[0].shape[1:])
        """``(V, H, W, 3)`` the model was exported for."""
        self.metadata = RewardModelMetadata.from_map(
            self._session.get_modelmeta().custom_metadata_map, str(path)
        )
        self.path = path

    def probabilities(self, views: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """``[N, heads]`` for uint8 ``[N, V, H, W, 3]``."""
        out = [
            np.asarray(
                self._session.run([OUTPUT_NAME], {INPUT_NAME: views[start : start + PREDICT_BATCH]})[0]
            )
            for start in range(0, len(views), PREDICT_BATCH)
        ]
        return np.concatenate(out).astype(np.float32)


@dataclass(frozen=True)
class HeadEvaluation:
    """One head's scores on a dataset."""

    head: str
    at_threshold: Confusion
    sweep: tuple[Confusion, ...]
    """At :data:`SWEEP_THRESHOLDS` and the head's threshold, ascending."""
    curve: tuple[Confusion, ...]
    """At :data:`PLOT_POINTS` thresholds, for the plot."""


def evaluate_head(
    head: str, probabilities: npt.NDArray[np.float32], labels: npt.NDArray[np.int8], threshold: float
) -> HeadEvaluation:
    """Scores of one head at ``threshold``, over the sweep and over the plot's thresholds."""
    sweep = sorted({*SWEEP_THRESHOLDS, threshold})
    grid = 1.0 / (1.0 + np.exp(-np.linspace(-PLOT_LOGIT_RANGE, PLOT_LOGIT_RANGE, PLOT_POINTS)))
    return HeadEvaluation(
        head=head,
        at_threshold=confusion(probabilities, labels, threshold),
        sweep=tuple(confusion(probabilities, labels, t) for t in sweep),
        curve=tuple(confusion(probabilities, labels, float(t)) for t in grid),
    )


def format_sweep(evaluation: HeadEvaluation) -> str:
    """The sweep as a table; the row of the head's threshold is marked."""
    rows = [f"{'threshold':>9}  {'precision':>9}  {'recall':>7}  {'TP':>6}  {'FP':>6}  {'FN':>6}  {'TN':>7}"]
    for c in evaluation.sweep:
        precision = "n/a" if np.isnan(c.precision) else f"{100.0 * c.precision:.2f}%"
        recall = "n/a" if np.isnan(c.recall) else f"{100.0 * c.recall:.2f}%"
        mark = "  <- threshold" if c.threshold == evaluation.at_threshold.threshold else ""
        rows.append(
            f"{c.threshold:>9.4f}  {precision:>9}  {recall:>7}  {c.true_positives:>6}  "
            f"{c.false_positives:>6}  {c.false_negatives:>6}  {c.true_negatives:>7}{mark}"
        )
    return "\n".join(rows)


def format_matrix(result: Confusion) -> str:
    """The confusion matrix (rows: label, columns: call)."""
    return "\n".join(
        [
            f"{'':>16}{'called positive':>17}{'called negative':>17}",
            f"{'label positive':>16}{result.true_positives:>17}{result.false_negatives:>17}",
            f"{'label negative':>16}{result.false_positives:>17}{result.true_negatives:>17}",
        ]
    )


ZOOM_FLOOR = 90.0
"""Lower edge (%) of the sweep plot's right-hand panels, where a 99 % target can be read."""


def plot_sweep(
    evaluations: Sequence[HeadEvaluation], path: Path, precision_target: float | None = None
) -> Path:
    """Write a PNG (atomically): precision and recall over the threshold, one row per head (left:
    0-100 %, right: the same from :data:`ZOOM_FLOOR` up), the head's threshold and the precision
    target marked."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the command may run on a headless training machine
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        len(evaluations), 2, figsize=(12, 3.5 * len(evaluations)), squeeze=False, sharex=True
    )
    try:
        for row, evaluation in zip(axes, evaluations, strict=True):
            thresholds = [c.threshold for c in evaluation.curve]
            for axis, floor in zip(row, (0.0, ZOOM_FLOOR), strict=True):
                axis.plot(thresholds, [100.0 * c.precision for c in evaluation.curve], label="precision")
                axis.plot(thresholds, [100.0 * c.recall for c in evaluation.curve], label="recall")
                axis.axvline(
                    evaluation.at_threshold.threshold,
                    color="tab:gray",
                    linestyle="--",
                    label=f"threshold {evaluation.at_threshold.threshold:.3f}",
                )
                if precision_target is not None:
                    axis.axhline(
                        100.0 * precision_target,
                        color="tab:red",
                        linestyle=":",
                        label=f"target {precision_target:g}",
                    )
                axis.set_title(f"head {evaluation.head}" + (f", {floor:g}-100 %" if floor else ""))
                axis.set_ylabel("%")
                axis.set_ylim(floor - (100.0 - floor) * 0.02, 100.0 + (100.0 - floor) * 0.02)
                axis.set_xscale("logit")
                axis.grid(alpha=0.3)
            row[0].legend(loc="lower left", fontsize="small")
        for axis in axes[-1]:
            axis.set_xlabel("threshold (a frame is positive above it)")
        figure.tight_layout()
        return atomic_write(path, lambda out: figure.savefig(out, format="png", dpi=100))
    finally:
        plt.close(figure)
