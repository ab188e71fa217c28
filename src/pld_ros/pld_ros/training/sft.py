"""Stage 3: supervised fine-tuning of the project's policies (:mod:`pld_ros.models.sft_policy`) on
converted datasets, optionally starting from an existing model's weights.

Data. Any mix of LeRobot v3.0 dataset directories (:class:`~pld_ros.data.lerobot_dataset.LeRobotReader`),
HDF5 files in the robomimic / LIBERO layout (:class:`~pld_ros.data.hdf5_dataset.Hdf5Reader`) and
directories of such HDF5 files. Each episode is read whole, its policy views resized to the
model's ``image_size`` (:class:`~pld_ros.core.image_view.PolicyViewer`: area averaging when
shrinking) and kept in memory (two 128 x 128 views: about 100 kB a frame, 2 GB for 20 000
frames). Only successful episodes are used unless ``include_failures`` is set: Stage 3 distils
what worked. Frames are drawn uniformly from all training frames, so each dataset weighs in
proportion to its frames. The chunk of frame ``t`` is the executed actions of ticks ``t .. t + H - 1``
of its episode, the last one repeated past the end (as the embedded base policy is trained).
The prompt is not an input of these models: several tasks in the data are learnt as one (logged).

Split and statistics. Whole episodes are held out for validation (``val_fraction``, seeded); the
proprioception's feature statistics and the action normalization (mean and deviation for the flow
head, quantile bins for the token head) come from the training frames.

Initialization (``init``): a weights file of :func:`~pld_ros.models.sft_policy.save_policy` (the
``policy.safetensors`` of an earlier run), or the embedded base policy's ONNX file
(:mod:`pld_ros.training.sim_base_policy`), whose weights are read back from the graph and checked
by running both (:func:`base_policy_weights`). The backbone (encoder, trunk and the proprioception
statistics it was trained under) always comes from the init, and so do its views and image size
unless given; the head and the action statistics too when the init is a model of the same head
and head settings; otherwise they start fresh (the base policy's regression head fits neither
family).

Optimization: AdamW, a linear warm-up then a cosine decay of the learning rate, gradient-norm
clipping, random-shift augmentation of the views (DrQ, :mod:`pld_ros.learning.augmentation`),
every random draw from torch's global generator seeded by ``seed``.

Files in the run directory ``out``:

- ``checkpoint/`` (:mod:`pld_ros.learning.checkpoint`): weights, optimizer state, the random
  generator's state, the step, the configs and the datasets; a run resumes from it exactly
  (``resume``), with the same datasets.
- ``policy.safetensors``: the newest weights (what ``pld sft export`` and ``--init`` read);
  ``best.safetensors``: the weights of the lowest validation loss so far.
- ``metrics.jsonl``: one JSON line per log interval (``train``) and validation (``val``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from pld_ros.core.image_view import PolicyViewer
from pld_ros.core.observation import PROPRIO_DIM, Float32Array
from pld_ros.data.hdf5_dataset import Hdf5Reader
from pld_ros.data.lerobot_dataset import INFO_PATH, LeRobotReader
from pld_ros.data.sft_episode import ACTION_NAMES, STATE_NAMES, SftEpisode
from pld_ros.learning.augmentation import random_shift
from pld_ros.learning.checkpoint import load_checkpoint, read_scalars, save_checkpoint
from pld_ros.models.resnet10 import tuples
from pld_ros.models.sft_policy import (
    BACKBONE_FIELDS,
    BACKBONE_KEYS,
    CONFIGS,
    Head,
    SftPolicy,
    SftPolicyConfig,
    head_config,
    load_policy,
    make_policy,
    read_policy_config,
    save_policy,
)
from pld_ros.profile import PolicyView

Log = Callable[[str], None]

CHECKPOINT_DIR = "checkpoint"
WEIGHTS_FILE = "policy.safetensors"
BEST_FILE = "best.safetensors"
METRICS_FILE = "metrics.jsonl"
HDF5_SUFFIXES = (".hdf5", ".h5")
EVAL_BATCH = 64
"""Frames per forward pass of the validation loss (memory, not results)."""
CHECK_TOLERANCE = 1e-4
"""Largest difference (action units, relative to the largest action) between the base policy's
ONNX graph and the model rebuilt from its weights for the weights to count as read correctly."""


@dataclass(frozen=True)
class SftTrainingConfig:
    """Hyperparameters of the optimization and the data (the model's are in its config)."""

    steps: int = 5000
    """Optimizer steps in all (a resumed run continues up to this many)."""
    batch_size: int = 32
    """Frames per step."""
    learning_rate: float = 3e-4
    """Peak AdamW learning rate, reached at the end of the warm-up."""
    min_learning_rate: float = 3e-5
    """Learning rate at the end of the cosine decay (the last step)."""
    warmup_steps: int = 200
    """Steps of linear warm-up from 0 (at most a tenth of ``steps``): Adam's moment estimates
    settle before full-size steps, which matters most when fine-tuning trained weights."""
    weight_decay: float = 1e-4
    """AdamW's decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's moment decay rates; a shorter second-moment memory than the default 0.999, common
    for transformer and flow policies (our choice)."""
    grad_clip: float = 1.0
    """Largest global gradient norm (larger gradients are scaled down); 0: no clipping."""
    shift_pixels: int = 4
    """Random-shift augmentation of each view by up to this many pixels; 0: none."""
    val_fraction: float = 0.1
    """Fraction of the episodes held out for the validation loss (at least one episode is kept
    for training; none is held out from a single episode)."""
    val_every: int = 500
    """Steps between validation losses (and at the last step)."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (and at the last step)."""
    log_every: int = 100
    """Steps between training-loss lines."""
    include_failures: bool = False
    """Train on failed episodes too (Stage 3 distils successes: off by default)."""
    seed: int = 0
    """Seed of the split, the initialization, the batches, the augmentation and the flow's noise."""
    threads: int = 2
    """torch CPU threads."""

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "val_every", "checkpoint_every", "log_every", "threads")
        if min(getattr(self, name) for name in positive) <= 0:
            raise ValueError(f"{', '.join(positive)} must be positive")
        if not 0.0 < self.min_learning_rate <= self.learning_rate:
            raise ValueError("learning rates must be 0 < min_learning_rate <= learning_rate")
        if min(self.warmup_steps, self.shift_pixels) < 0 or self.weight_decay < 0.0 or self.grad_clip < 0.0:
            raise ValueError("warmup_steps, shift_pixels, weight_decay and grad_clip must not be negative")
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SftTrainingConfig:
        """The config saved by :meth:`to_json`."""
        return cls(**tuples(json.loads(text)))


def learning_rate(step: int, config: SftTrainingConfig) -> float:
    """The learning rate of step ``step`` (0-based): linear warm-up to the peak, then a cosine
    decay to ``min_learning_rate`` at the last step."""
    warmup = min(config.warmup_steps, config.steps // 10)
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    span = max(config.steps - 1 - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_learning_rate + (config.learning_rate - config.min_learning_rate) * cosine


# ---- data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpisodeSource:
    """Where a training episode comes from."""

    dataset: str
    """The dataset path (a LeRobot directory or an HDF5 file)."""
    index: int
    """The episode's index in that dataset."""
    frames: int
    success: bool


@dataclass(frozen=True, eq=False)
class SftFrames:
    """The frames of the episodes used, concatenated in episode order."""

    views: npt.NDArray[np.uint8]
    """``[N, V, H, W, 3]``, the policy's views resized to its image size."""
    proprio: Float32Array
    """``[N, 8]``."""
    actions: Float32Array
    """``[N, 7]`` executed actions."""
    episode: npt.NDArray[np.int64]
    """``[N]``: index of each frame's episode in :attr:`sources`."""
    sources: tuple[EpisodeSource, ...]
    tasks: tuple[str, ...]
    """The distinct prompts of the episodes used."""

    def __len__(self) -> int:
        return len(self.actions)

    def frames_of(self, episodes: Sequence[int]) -> npt.NDArray[np.int64]:
        """Indices of the frames of ``episodes`` (indices into :attr:`sources`)."""
        return np.flatnonzero(np.isin(self.episode, np.asarray(episodes, dtype=np.int64))).astype(np.int64)

    def chunks(self, index: npt.NDArray[np.int64], horizon: int) -> Float32Array:
        """``[len(index), horizon, 7]``: each frame's actions of the next ``horizon`` ticks of its
        episode, the episode's last action repeated past its end."""
        ends = np.cumsum([source.frames for source in self.sources])[self.episode[index]]
        ticks = np.minimum(index[:, None] + np.arange(horizon)[None, :], ends[:, None] - 1)
        chunks: Float32Array = self.actions[ticks]
        return chunks


def dataset_files(path: Path) -> list[Path]:
    """The datasets at ``path``: a LeRobot directory itself, an HDF5 file, or the HDF5 files of a
    directory; ValueError naming ``path`` for anything else."""
    if (path / INFO_PATH).is_file():
        return [path]
    if path.is_file() and path.suffix in HDF5_SUFFIXES:
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in HDF5_SUFFIXES)
        if files:
            return files
    raise ValueError(
        f"{path}: not a dataset (a LeRobot v3.0 directory with {INFO_PATH}, an HDF5 file, "
        f"or a directory of HDF5 files)"
    )


def read_episodes(path: Path) -> Iterator[tuple[int, SftEpisode]]:
    """``(index, episode)`` of every episode of one dataset file or directory, in order."""
    if path.is_dir():
        yield from enumerate(LeRobotReader(path))
        return
    with Hdf5Reader(path) as reader:
        yield from enumerate(reader)


def episode_frames(
    episode: SftEpisode, views: Sequence[str], image_size: tuple[int, int], name: str
) -> tuple[npt.NDArray[np.uint8], Float32Array, Float32Array]:
    """An episode's ``[T, V, H, W, 3]`` views (resized), ``[T, 8]`` proprio and ``[T, 7]`` actions;
    ValueError naming ``name`` if it lacks a view or its state or actions are not the project's."""
    missing = [view for view in views if view not in episode.cameras]
    if missing:
        raise ValueError(
            f"{name}: no camera {', '.join(missing)} for the policy's views {', '.join(views)} "
            f"(the dataset has {', '.join(episode.cameras) or 'none'})"
        )
    for what, array, names, expected in (
        ("state", episode.state, episode.state_names, STATE_NAMES),
        ("action", episode.action, episode.action_names, ACTION_NAMES),
    ):
        if array.shape[1] != len(expected) or (names and tuple(names) != expected):
            raise ValueError(
                f"{name}: {what} is {array.shape[1]} values {list(names) or ''}, the policy takes "
                f"{len(expected)}: {' '.join(expected)} (pld_ros.core.observation)"
            )
    height, width = image_size
    resized = []
    for view in views:
        images = episode.cameras[view]
        viewer = PolicyViewer(PolicyView(width=width, height=height), images.shape[2], images.shape[1])
        resized.append(np.stack([viewer(image) for image in images]))
    return np.stack(resized, axis=1), episode.state, episode.action


def load_frames(
    paths: Sequence[Path],
    views: Sequence[str],
    image_size: tuple[int, int],
    *,
    include_failures: bool = False,
    log: Log = print,
) -> SftFrames:
    """The frames of every (successful, unless ``include_failures``) episode of ``paths`` (module
    docstring); ValueError naming the dataset and episode for data the policy cannot take."""
    views_parts: list[npt.NDArray[np.uint8]] = []
    proprio_parts: list[Float32Array] = []
    action_parts: list[Float32Array] = []
    sources: list[EpisodeSource] = []
    tasks: dict[str, None] = {}
    for path in paths:
        for dataset in dataset_files(path):
            used = skipped = frames = 0
            for index, episode in read_episodes(dataset):
                if not episode.success and not include_failures:
                    skipped += 1
                    continue
                images, proprio, actions = episode_frames(
                    episode, views, image_size, f"{dataset} episode {index}"
                )
                views_parts.append(images)
                proprio_parts.append(proprio)
                action_parts.append(actions)
                sources.append(EpisodeSource(str(dataset), index, len(episode), episode.success))
                tasks[episode.task] = None
                used += 1
                frames += len(episode)
            log(
                f"{dataset}: {used} episodes, {frames} frames"
                + (f", {skipped} failed left out" if skipped else "")
            )
    if not sources:
        raise ValueError(
            f"no {'' if include_failures else 'successful '}episodes in {', '.join(map(str, paths))}"
            + ("" if include_failures else " (include failures to train on every episode)")
        )
    if len(tasks) > 1:
        log(
            f"{len(tasks)} tasks in the data ({'; '.join(tasks)}): "
            "the policy takes no prompt and learns them as one"
        )
    return SftFrames(
        views=np.concatenate(views_parts),
        proprio=np.concatenate(proprio_parts).astype(np.float32),
        actions=np.concatenate(action_parts).astype(np.float32),
        episode=np.repeat(np.arange(len(sources), dtype=np.int64), [s.frames for s in sources]),
        sources=tuple(sources),
        tasks=tuple(tasks),
    )


def split_episodes(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Training and validation episode indices: a seeded draw of ``round(val_fraction * count)``
    whole episodes held out, at least one kept for training."""
    order = np.random.default_rng(seed).permutation(count)
    held = min(round(val_fraction * count), count - 1)
    return sorted(order[held:].tolist()), sorted(order[:held].tolist())


# ---- initialization ------------------------------------------------------------------------


@dataclass(frozen=True)
class InitialWeights:
    """Weights to start from (module docstring)."""

    source: Path
    backbone: dict[str, object]
    """Config values of the backbone the weights fit (:data:`~pld_ros.models.sft_policy.BACKBONE_FIELDS`
    and ``image_size``)."""
    state: dict[str, torch.Tensor]
    """State-dict entries: the backbone's, and the head's when :attr:`config` is set."""
    config: SftPolicyConfig | None
    """The whole model's config when the weights are an SFT policy's (their head can be reused)."""


def base_policy_weights(path: Path) -> InitialWeights:
    """The backbone of the embedded base policy's ONNX file (the contract of
    :mod:`pld_ros.training.sim_base_policy`, its config in the ``config`` metadata).

    ``torch.onnx.export`` keeps parameters under their names, except the GroupNorm scales and
    shifts, which it folds into ``Mul`` / ``Add`` constants after an ``InstanceNormalization``:
    those are found by following each convolution's output to them. The rebuilt model is run
    against the graph; ValueError naming the file unless both give the same actions."""
    import onnx
    from onnx import numpy_helper

    from pld_ros.models.resnet10 import config_from_json
    from pld_ros.policies.onnx_policy import IMAGES, PROPRIO
    from pld_ros.policies.onnx_runtime import inference_session
    from pld_ros.training.sim_base_policy import BasePolicyConfig, SimBasePolicy

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises protobuf's own errors for a bad file
        raise ValueError(f"{path}: not an ONNX file: {exc}") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "config" not in props:
        raise ValueError(
            f"{path}: no 'config' metadata: not a base policy of pld_ros.training.sim_base_policy"
        )
    config = config_from_json(BasePolicyConfig, props["config"], f"{path}: base policy")
    policy = SimBasePolicy(config)
    graph = model.graph
    constants = {
        init.name: torch.from_numpy(numpy_helper.to_array(init).copy()) for init in graph.initializer
    }
    aliases = {
        n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in constants
    }
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def constant(name: str) -> torch.Tensor | None:
        return constants.get(aliases.get(name, name))

    def follow(output: str, ops: Sequence[str]) -> onnx.NodeProto | None:
        """The node reached from ``output`` through the one consumer of each type in ``ops``
        (a GroupNorm also reads its input's shape, to restore it after the instance norm)."""
        node = None
        for op in ops:
            nodes = [n for n in consumers.get(output, []) if n.op_type == op]
            if len(nodes) != 1:
                return None
            node, output = nodes[0], nodes[0].output[0]
        return node

    state = {name: constants[name] for name in policy.state_dict() if name in constants}
    convs = {n.input[1]: n for n in graph.node if n.op_type == "Conv"}
    modules = list(policy.named_modules())
    for position, (name, module) in enumerate(modules):
        if not isinstance(module, torch.nn.GroupNorm):
            continue
        # The convolution whose output this norm takes: the module registered just before it.
        conv = convs.get(f"{modules[position - 1][0]}.weight")
        mul = (
            None
            if conv is None
            else follow(conv.output[0], ("Reshape", "InstanceNormalization", "Reshape", "Mul"))
        )
        add = None if mul is None else follow(mul.output[0], ("Add",))
        if mul is None or add is None:
            raise ValueError(f"{path}: cannot find the scale and shift of {name} in the graph")
        for key, node in (("weight", mul), ("bias", add)):
            value = next((constant(i) for i in node.input if constant(i) is not None), None)
            if value is None:
                raise ValueError(f"{path}: {name}.{key} is not a constant of the graph")
            state[f"{name}.{key}"] = value.reshape(-1)
    try:
        policy.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: the graph's weights do not fit its config: {exc}") from None
    image = graph.input[0].type.tensor_type.shape.dim
    static = tuple(int(d.dim_value) for d in image[2:4] if d.dim_value > 0)
    height, width = static if len(static) == 2 else (64, 64)  # any size checks a dynamic graph
    # Both on the same random observation: the graph is the truth the weights must reproduce.
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (2, len(config.views), height, width, 3), dtype=torch.uint8, generator=generator
    )
    proprio = torch.randn(2, PROPRIO_DIM, generator=generator)
    with torch.no_grad():
        rebuilt = policy.eval()(images, proprio).numpy()
    session = inference_session(str(path), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {IMAGES: images.numpy(), PROPRIO: proprio.numpy()})
    error = float(np.max(np.abs(rebuilt - expected)))
    if error > CHECK_TOLERANCE * max(float(np.max(np.abs(expected))), 1e-3):
        raise ValueError(f"{path}: the weights read from the graph give other actions (off by {error:.3g})")
    return InitialWeights(
        source=path,
        # The base policy's config names its backbone as ours does; a static image size is kept.
        backbone={name: getattr(config, name) for name in BACKBONE_FIELDS}
        | ({"image_size": static} if len(static) == 2 else {}),
        state={key: value for key, value in policy.state_dict().items() if key.startswith(BACKBONE_KEYS)},
        config=None,
    )


def initial_weights(path: Path) -> InitialWeights:
    """The weights at ``path``: an SFT policy's safetensors file (or a run directory holding one)
    or the base policy's ONNX file; ValueError naming the file otherwise."""
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"{path}: no such weights file")
    if path.suffix == ".onnx":
        return base_policy_weights(path)
    policy = load_policy(path)
    config = policy.config
    return InitialWeights(
        source=path,
        backbone={**config.backbone(), "image_size": config.image_size},
        state=dict(policy.state_dict()),
        config=config,
    )


def apply_initial_weights(policy: SftPolicy, init: InitialWeights) -> str:
    """Load ``init`` into ``policy`` (built with its backbone); what was loaded, for the log."""
    if init.config is not None and init.config == policy.config:
        policy.load_state_dict(init.state)
        return f"backbone, head and action statistics from {init.source}"
    backbone = {key: value for key, value in init.state.items() if key.startswith(BACKBONE_KEYS)}
    result = policy.load_state_dict(backbone, strict=False)
    missing = [key for key in result.missing_keys if key.startswith(BACKBONE_KEYS)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{init.source}: backbone weights do not fit: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    why = "a base policy" if init.config is None else "another head or head configuration"
    return f"backbone from {init.source} ({why}: head and action statistics start fresh)"


def policy_config(head: Head, init: InitialWeights | None, changes: Mapping[str, object]) -> SftPolicyConfig:
    """The config of a new model: ``changes`` over the init's backbone (and its head settings when
    it has the same head) over the defaults; ValueError when ``changes`` alter the backbone's
    weight shapes of an init."""
    values: dict[str, object] = {}
    if init is not None:
        if init.config is not None and isinstance(init.config, CONFIGS[head]):
            values.update(asdict(init.config))
            values["encoder"] = init.config.encoder
        values.update(init.backbone)
        clashes = [
            key
            for key in changes
            if key in init.backbone and key != "image_size" and changes[key] != init.backbone[key]
        ]
        if clashes:
            raise ValueError(
                f"{init.source} fixes {', '.join(clashes)}; leave them out to start from its weights"
            )
    values.update(changes)
    return head_config(head, **values)


# ---- training ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingResult:
    """What a training run did."""

    steps: int
    """Steps done in all (with those of the run resumed)."""
    train_episodes: int
    val_episodes: int
    train_frames: int
    val_frames: int
    final_loss: float
    """Mean training loss over the last log interval."""
    val_loss: float | None
    """Validation loss at the end; None without validation episodes."""
    best_val_loss: float | None
    steps_per_second: float
    """Training steps per second of this process (without validation and checkpoints)."""
    weights: Path
    """The newest weights (``policy.safetensors``)."""


def batch(
    frames: SftFrames, index: npt.NDArray[np.int64], horizon: int, shift_pixels: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (augmented by ``shift_pixels``), proprio and target chunks of the frames ``index``."""
    images = random_shift(torch.from_numpy(frames.views[index]), shift_pixels)
    return images, torch.from_numpy(frames.proprio[index]), torch.from_numpy(frames.chunks(index, horizon))


def train_step(
    policy: SftPolicy,
    optimizer: torch.optim.Optimizer,
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    lr: float,
    grad_clip: float,
) -> float:
    """One optimizer step on a batch at learning rate ``lr``; the batch's loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = policy.loss(*inputs)
    optimizer.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
    if grad_clip > 0.0:
        torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
    optimizer.step()
    return float(loss.item())


def validation_loss(policy: SftPolicy, frames: SftFrames, index: npt.NDArray[np.int64], seed: int) -> float:
    """The mean loss over the frames ``index`` (unaugmented), with the flow's noise and times
    drawn from a generator seeded by ``seed``: the same draws at every evaluation, so the values
    compare."""
    generator = torch.Generator().manual_seed(seed)
    policy.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(index), EVAL_BATCH):
            part = index[start : start + EVAL_BATCH]
            images, proprio, chunks = batch(frames, part, policy.config.chunk_horizon, 0)
            total += float(policy.loss(images, proprio, chunks, generator).item()) * len(part)
    policy.train()
    return total / len(index)


def make_optimizer(policy: SftPolicy, config: SftTrainingConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        policy.parameters(), lr=config.learning_rate, betas=config.betas, weight_decay=config.weight_decay
    )


def train_sft(
    datasets: Sequence[Path],
    out: Path,
    head: Head,
    training: SftTrainingConfig | None = None,
    *,
    policy_changes: Mapping[str, object] | None = None,
    init: Path | None = None,
    resume: bool = False,
    log: Log = print,
) -> TrainingResult:
    """Fine-tune a ``head`` policy on ``datasets`` into the run directory ``out`` (module docstring).

    ``policy_changes``: config values of the model (e.g. ``chunk_horizon``). ``resume``: continue
    the run in ``out`` from its checkpoint, with its configs, up to ``training.steps``; the
    datasets must be the ones it started with. ValueError for bad data, a clash of settings, or an
    ``out`` that holds another run (without ``resume``)."""
    training = training or SftTrainingConfig()
    datasets = [path.resolve() for path in datasets]
    checkpoint = out / CHECKPOINT_DIR
    scalars: dict[str, Any] | None = None
    loaded: InitialWeights | None = None
    if resume:
        if init is not None:
            raise ValueError("a resumed run continues from its checkpoint: leave out the initial weights")
        try:
            scalars = read_scalars(checkpoint)
        except FileNotFoundError:
            raise ValueError(f"{out}: no checkpoint to resume") from None
        if scalars["head"] != head:
            raise ValueError(f"{out}: the run trains the {scalars['head']} head, not {head}")
        if scalars["datasets"] != [str(path) for path in datasets]:
            raise ValueError(
                f"{out}: the run was trained on {scalars['datasets']}; resume it with those datasets"
            )
        config = CONFIGS[head].from_json(scalars["policy"])
        training = replace(SftTrainingConfig.from_json(scalars["training"]), steps=training.steps)
    else:
        if checkpoint.exists() or (out / WEIGHTS_FILE).exists():
            raise ValueError(f"{out}: holds a training run already; resume it or choose another directory")
        loaded = initial_weights(init) if init is not None else None
        config = policy_config(head, loaded, policy_changes or {})
    torch.set_num_threads(training.threads)
    frames = load_frames(
        datasets, config.views, config.image_size, include_failures=training.include_failures, log=log
    )
    train_episodes, val_episodes = split_episodes(len(frames.sources), training.val_fraction, training.seed)
    train_index, val_index = frames.frames_of(train_episodes), frames.frames_of(val_episodes)
    log(
        f"{len(train_index)} training frames from {len(train_episodes)} episodes, "
        f"{len(val_index)} validation frames from {len(val_episodes)}"
    )
    torch.manual_seed(training.seed)
    policy = make_policy(config)
    optimizer = make_optimizer(policy, training)
    rng = torch.get_rng_state()
    step, best = 0, None
    if scalars is not None:
        load_checkpoint(checkpoint, {"policy": policy}, {"optimizer": optimizer}, {"rng": rng})
        torch.set_rng_state(rng)
        step, best = int(scalars["step"]), scalars["best_val_loss"]
        log(f"resumed {out} at step {step}")
    else:
        policy.set_statistics(frames.proprio[train_index], frames.actions[train_index])
        if loaded is not None:
            log(f"initialized the {head} policy: {apply_initial_weights(policy, loaded)}")
    out.mkdir(parents=True, exist_ok=True)

    def save(at: int) -> None:
        saved = {
            "step": at,
            "head": head,
            "policy": config.to_json(),
            "training": training.to_json(),
            "datasets": [str(path) for path in datasets],
            "best_val_loss": best,
        }
        save_checkpoint(
            checkpoint, {"policy": policy}, {"optimizer": optimizer}, {"rng": torch.get_rng_state()}, saved
        )
        save_policy(policy, out / WEIGHTS_FILE)

    def record(entry: dict[str, Any]) -> None:
        with (out / METRICS_FILE).open("a") as metrics:
            metrics.write(json.dumps(entry) + "\n")

    policy.train()
    losses: list[float] = []
    last_loss = float("nan")
    val_loss: float | None = None
    busy = 0.0
    done_here = 0
    while step < training.steps:
        started = time.perf_counter()
        index = train_index[torch.randint(len(train_index), (training.batch_size,)).numpy()]
        inputs = batch(frames, index, config.chunk_horizon, training.shift_pixels)
        lr = learning_rate(step, training)
        losses.append(train_step(policy, optimizer, inputs, lr, training.grad_clip))
        busy += time.perf_counter() - started
        done_here += 1
        step += 1
        last = step == training.steps
        if step % training.log_every == 0 or last:
            last_loss = float(np.mean(losses))
            log(
                f"step {step}/{training.steps}: loss {last_loss:.4f}, lr {lr:.2e} "
                f"({done_here / busy:.1f} steps/s)"
            )
            record({"kind": "train", "step": step, "loss": last_loss, "lr": lr})
            losses = []
        if len(val_index) and (step % training.val_every == 0 or last):
            val_loss = validation_loss(policy, frames, val_index, training.seed)
            improved = best is None or val_loss < best
            if improved:
                best = val_loss
                save_policy(policy, out / BEST_FILE)
            log(f"step {step}: validation loss {val_loss:.4f}" + (" (best so far)" if improved else ""))
            record({"kind": "val", "step": step, "loss": val_loss})
        if step % training.checkpoint_every == 0 or last:
            save(step)
    if done_here == 0:
        log(f"{out}: already at step {step} of {training.steps}; nothing to do")
        if scalars is None:
            save(step)
    return TrainingResult(
        steps=step,
        train_episodes=len(train_episodes),
        val_episodes=len(val_episodes),
        train_frames=len(train_index),
        val_frames=len(val_index),
        final_loss=last_loss,
        val_loss=val_loss,
        best_val_loss=best,
        steps_per_second=done_here / busy if busy > 0.0 else 0.0,
        weights=out / WEIGHTS_FILE,
    )


def weights_file(path: Path, best: bool = False) -> Path:
    """The weights a path names: a weights file itself, or a run directory's newest (or ``best``)
    weights; ValueError when there are none."""
    if path.is_dir():
        path = path / (BEST_FILE if best else WEIGHTS_FILE)
    if not path.is_file():
        raise ValueError(f"{path}: no such weights file")
    read_policy_config(path)  # a clear error for a file of another kind
    return path
