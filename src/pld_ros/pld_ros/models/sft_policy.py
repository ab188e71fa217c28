"""Stage 3's policies: one small vision backbone, two action-head families (PLD distils into both).

PLD's third stage fine-tunes the base policy on the successful trajectories of Stage 2. The paper
distils into VLAs of two kinds: pi0's flow-matching action expert and OpenVLA's autoregressive
discretized action tokens. These are the project's small, CPU-sized counterparts of both, on one
backbone:

- **Backbone** (shared, :class:`SftPolicy`): the project's ResNet-10 (:mod:`pld_ros.models.resnet10`)
  shared by the views, its embeddings concatenated with the normalized proprioception's features
  (:mod:`pld_ros.models.proprio`), then ``num_layers`` Linear -> LayerNorm -> tanh blocks to an
  observation embedding of ``hidden_dim``. Its parameter names (``encoder.*``, ``trunk.*``,
  ``feature_mean``, ``feature_std``) are those of the embedded simulation base policy
  (:class:`~pld_ros.training.sim_base_policy.SimBasePolicy`), so its trained weights load as they are
  ("distil into the base policy").
- **Flow matching** (:class:`FlowMatchingPolicy`, as pi0): a velocity field over the whole action
  chunk ``[H, 7]`` in normalized units (z-scores of the training actions), trained by conditional
  flow matching along straight paths (rectified flow) ``x_t = t * noise + (1 - t) * actions`` with
  the target velocity ``noise - actions`` and ``t ~ Beta(time_alpha, 1)``, which puts more weight on
  noisy times (pi0's choice). Inference integrates ``dx/dt = v`` from ``t = 1`` to ``0`` in
  ``num_inference_steps`` Euler steps.
- **Autoregressive tokens** (:class:`AutoregressivePolicy`, as OpenVLA / RT-2): each action value is
  binned into ``num_bins`` uniform bins between its training data's ``quantiles`` (OpenVLA: 256 bins
  between the 1st and 99th percentile; values outside fall into the edge bins), and the chunk's
  ``H * 7`` tokens (time step by time step, the 7 values in action order) are predicted one by one
  by a small causal transformer whose first input is the observation embedding. Training uses
  teacher forcing (cross-entropy on every token given the true earlier ones); inference decodes
  greedily with a key/value cache, and a token becomes the centre of its bin.

ONNX (:func:`export_onnx`): the contract of :mod:`pld_ros.policies.onnx_policy` -- inputs
``images`` uint8 ``[B, V, H, W, 3]`` and ``proprio`` float32 ``[B, 8]``, output ``actions`` float32
``[B, chunk_horizon, 7]`` -- so either model replaces ``config/models/franka_pick_cube_base.onnx``.
Every normalization is inside the graph. The flow model integrates from **zero noise**: the base
policy backend feeds exactly ``images`` and ``proprio`` (it refuses a model with another input),
so the graph cannot take noise from the node, and a fixed random draw baked into the file would be
one arbitrary sample forever. Zero is the noise distribution's mean and, per value, its median;
the flow's map from noise to actions is monotone in one dimension, so zero lands on the median
action of what the data shows for this observation, the deterministic choice (the embedded base
policy's L1 loss also predicts the median). The autoregressive model's greedy loop is unrolled in
the graph (``H * 7`` decoding steps).

Weights: a safetensors file of the state dict with metadata ``format``, ``head`` and ``config``
(:func:`save_policy`, :func:`load_policy`).
"""

from __future__ import annotations

import json
import math
import tempfile
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import BinaryIO, ClassVar, Literal, TypeVar

import onnx
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save
from torch import nn
from torch.nn import functional

from pld_ros.core.atomic_file import atomic_write
from pld_ros.core.observation import ACTION_DIM, PROPRIO_DIM, Float32Array
from pld_ros.models.proprio import PROPRIO_FEATURE_DIM, proprio_features
from pld_ros.models.residual_actor import mlp
from pld_ros.models.resnet10 import ResNet10Config, ResNet10Encoder, config_from_json
from pld_ros.policies.onnx_policy import ACTIONS, IMAGES, PROPRIO

Head = Literal["flow", "ar"]
HEADS: tuple[Head, ...] = ("flow", "ar")
FORMAT = "pld_ros.sft_policy/1"
"""``format`` metadata of a weights file; :func:`load_policy` refuses others."""
BACKBONE_FIELDS = ("encoder", "views", "hidden_dim", "num_layers")
"""Config fields that shape the backbone's weights: a model initialized from another takes them."""
BACKBONE_KEYS = ("encoder.", "trunk.", "feature_mean", "feature_std")
"""Prefixes of the backbone's state-dict entries (the rest belongs to the head)."""
MIN_STD = 1e-3
"""A value whose standard deviation in the data is below this keeps a unit scale (a constant
dimension, e.g. a rotation the task never uses, is not blown up to noise)."""
MIN_BIN_RANGE = 1e-4
"""Smallest span between an action value's lower and upper bin edge (a constant dimension still
gets bins of a finite width)."""

C = TypeVar("C", bound="SftPolicyConfig")


# ---- configs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SftPolicyConfig:
    """Hyperparameters shared by both heads: the backbone, the chunk and the input size."""

    encoder: ResNet10Config = field(
        default_factory=lambda: ResNet10Config(widths=(16, 32, 64, 128), embedding_dim=64)
    )
    """Image encoder shared by the views; the embedded base policy's (a quarter of the paper
    widths, 64-d embeddings), so its weights can initialize this one and both run in a few ms on
    a CPU."""
    views: tuple[str, ...] = ("wrist", "side")
    """Camera views in input order (the profile's ``policies.base.views``)."""
    hidden_dim: int = 256
    """Units of each backbone block, and the size of the observation embedding the heads read."""
    num_layers: int = 2
    """Linear -> LayerNorm -> tanh blocks of the backbone after the encoder (the base policy's 2)."""
    chunk_horizon: int = 4
    """Actions predicted per call (H); must be at least the profile's ``policies.base.chunk_horizon``
    (the node cuts a longer chunk). Our default: a short chunk, as ACT and pi0 predict chunks, short
    enough for the token head to decode in a few ms on a CPU (its cost grows with H * 7 tokens)."""
    image_size: tuple[int, int] = (128, 128)
    """(height, width) every view is resized to for training; the exported model's static size
    (the profile's ``policy_view``; the simulated cameras render 128 x 128)."""

    def __post_init__(self) -> None:
        if not self.views or len(set(self.views)) != len(self.views):
            raise ValueError(f"views must be distinct camera names, got {self.views}")
        if min(self.hidden_dim, self.num_layers, self.chunk_horizon) <= 0:
            raise ValueError("hidden_dim, num_layers and chunk_horizon must be positive")
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            raise ValueError(f"image_size must be a positive (height, width), got {self.image_size}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        """The config saved by :meth:`to_json`; ValueError if it is not one."""
        return config_from_json(cls, text, cls.__name__)

    def backbone(self) -> dict[str, object]:
        """The values of :data:`BACKBONE_FIELDS`."""
        return {name: getattr(self, name) for name in BACKBONE_FIELDS}


@dataclass(frozen=True)
class FlowMatchingConfig(SftPolicyConfig):
    """Hyperparameters of :class:`FlowMatchingPolicy` (and the shared ones)."""

    flow_hidden_dim: int = 256
    """Units of each block of the velocity network."""
    flow_layers: int = 3
    """Linear -> LayerNorm -> SiLU blocks of the velocity network (then a linear output)."""
    time_embedding_dim: int = 64
    """Size of the sinusoidal embedding of the flow time t (half sines, half cosines)."""
    time_periods: tuple[float, float] = (4e-3, 4.0)
    """Shortest and longest period of the time embedding's sinusoids, geometrically spaced (pi0's)."""
    time_alpha: float = 1.5
    """Training times are drawn from Beta(time_alpha, 1) on (0, 1], t = 1 being pure noise: pi0's
    1.5 gives noisy times more weight, where the velocity is hardest to predict."""
    time_min: float = 1e-3
    """Training times lie in [time_min, 1] (pi0's 0.001): at t = 0 the target is degenerate."""
    num_inference_steps: int = 10
    """Euler steps from noise to actions at inference (pi0's 10); each costs one velocity-network
    pass, the backbone runs once."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.flow_hidden_dim, self.flow_layers, self.num_inference_steps) <= 0:
            raise ValueError("flow_hidden_dim, flow_layers and num_inference_steps must be positive")
        if self.time_embedding_dim <= 0 or self.time_embedding_dim % 2:
            raise ValueError(
                f"time_embedding_dim must be a positive even number, got {self.time_embedding_dim}"
            )
        if not 0.0 < self.time_periods[0] < self.time_periods[1]:
            raise ValueError(f"time_periods must be 0 < shortest < longest, got {self.time_periods}")
        if self.time_alpha <= 0.0 or not 0.0 <= self.time_min < 1.0:
            raise ValueError("time_alpha must be positive and time_min in [0, 1)")


@dataclass(frozen=True)
class AutoregressiveConfig(SftPolicyConfig):
    """Hyperparameters of :class:`AutoregressivePolicy` (and the shared ones)."""

    num_bins: int = 256
    """Bins (tokens) per action value (OpenVLA's 256)."""
    quantiles: tuple[float, float] = (0.01, 0.99)
    """Quantiles of each action value in the training data that bound its bins (OpenVLA's 1st and
    99th percentile: a few outliers do not stretch the bins of all other values)."""
    model_dim: int = 128
    """Width of the decoder: token, position and observation embeddings."""
    num_heads: int = 4
    """Attention heads per decoder layer (model_dim must be a multiple)."""
    decoder_layers: int = 2
    """Pre-LayerNorm transformer layers (causal self-attention, then a GELU MLP)."""
    mlp_ratio: int = 4
    """Hidden units of each layer's MLP per model_dim."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_bins < 2:
            raise ValueError(f"num_bins must be at least 2, got {self.num_bins}")
        if not 0.0 <= self.quantiles[0] < self.quantiles[1] <= 1.0:
            raise ValueError(f"quantiles must be 0 <= low < high <= 1, got {self.quantiles}")
        if min(self.model_dim, self.num_heads, self.decoder_layers, self.mlp_ratio) <= 0:
            raise ValueError("model_dim, num_heads, decoder_layers and mlp_ratio must be positive")
        if self.model_dim % self.num_heads:
            raise ValueError(f"model_dim {self.model_dim} is not a multiple of num_heads {self.num_heads}")

    @property
    def num_tokens(self) -> int:
        """Tokens per chunk: one per action value of each of the H steps."""
        return self.chunk_horizon * ACTION_DIM


CONFIGS: dict[Head, type[SftPolicyConfig]] = {"flow": FlowMatchingConfig, "ar": AutoregressiveConfig}


def head_config(head: Head, **values: object) -> SftPolicyConfig:
    """The config of ``head`` with ``values`` (fields of either head's config are accepted only
    when this head has them: ValueError naming the others)."""
    config = CONFIGS[head]
    known = {f.name for f in fields(config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"the {head} head has no setting {', '.join(unknown)}")
    return config(**values)  # type: ignore[arg-type]


# ---- the models ----------------------------------------------------------------------------


def standardization(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of ``[N, D]`` values per column; a column whose deviation is
    below :data:`MIN_STD` gets 1."""
    std = values.std(dim=0)
    return values.mean(dim=0), torch.where(std > MIN_STD, std, torch.ones_like(std))


class SftPolicy(nn.Module, ABC):
    """The shared backbone and interface: uint8 images ``[B, V, H, W, 3]`` and proprio ``[B, 8]``
    -> actions ``[B, H, 7]`` (:meth:`forward`, deterministic: what the ONNX graph computes)."""

    head: ClassVar[Head]
    config: SftPolicyConfig
    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, config: SftPolicyConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ResNet10Encoder(config.encoder)
        in_dim = len(config.views) * config.encoder.embedding_dim + PROPRIO_FEATURE_DIM
        self.trunk = mlp(in_dim, config.hidden_dim, config.num_layers)
        # Data statistics, set by set_statistics before training and saved with the weights.
        self.register_buffer("feature_mean", torch.zeros(PROPRIO_FEATURE_DIM))
        self.register_buffer("feature_std", torch.ones(PROPRIO_FEATURE_DIM))

    def observation(self, images: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """The observation embedding ``[B, hidden_dim]`` both heads read."""
        features = (proprio_features(proprio) - self.feature_mean) / self.feature_std
        embedding: torch.Tensor = self.trunk(torch.cat([self.encoder.encode_views(images), features], dim=1))
        return embedding

    def set_statistics(self, proprio: Float32Array, actions: Float32Array) -> None:
        """Normalize inputs and outputs by training data: ``[N, 8]`` proprio, ``[N, 7]`` actions."""
        mean, std = standardization(proprio_features(torch.as_tensor(proprio, dtype=torch.float32)))
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std)
        self.set_action_statistics(torch.as_tensor(actions, dtype=torch.float32))

    @abstractmethod
    def set_action_statistics(self, actions: torch.Tensor) -> None:
        """Set the head's action normalization from ``[N, 7]`` training actions."""

    @abstractmethod
    def loss(
        self,
        images: torch.Tensor,
        proprio: torch.Tensor,
        chunks: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The training loss of a batch with its target chunks ``[B, H, 7]``; random draws (if
        any) from ``generator``, or torch's global generator."""

    @abstractmethod
    def forward(self, images: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """The deterministic action chunk ``[B, H, 7]`` (the exported computation)."""


class FlowMatchingPolicy(SftPolicy):
    """Flow-matching action head (module docstring)."""

    head = "flow"
    config: FlowMatchingConfig
    action_mean: torch.Tensor
    action_std: torch.Tensor
    time_frequencies: torch.Tensor

    def __init__(self, config: FlowMatchingConfig | None = None) -> None:
        super().__init__(config or FlowMatchingConfig())
        config = self.config
        chunk = config.chunk_horizon * ACTION_DIM
        layers: list[nn.Module] = []
        width = config.hidden_dim + chunk + config.time_embedding_dim
        for _ in range(config.flow_layers):
            layers += [
                nn.Linear(width, config.flow_hidden_dim),
                nn.LayerNorm(config.flow_hidden_dim),
                nn.SiLU(),
            ]
            width = config.flow_hidden_dim
        self.velocity_net = nn.Sequential(*layers, nn.Linear(width, chunk))
        self.register_buffer("action_mean", torch.zeros(ACTION_DIM))
        self.register_buffer("action_std", torch.ones(ACTION_DIM))
        shortest, longest = config.time_periods
        periods = torch.logspace(
            math.log10(shortest), math.log10(longest), config.time_embedding_dim // 2, dtype=torch.float32
        )
        # From the config, not learned: not part of the state dict.
        self.register_buffer("time_frequencies", 2.0 * math.pi / periods, persistent=False)

    def set_action_statistics(self, actions: torch.Tensor) -> None:
        mean, std = standardization(actions)
        self.action_mean.copy_(mean)
        self.action_std.copy_(std)

    def velocity(self, observation: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity ``[B, H, 7]`` at the normalized chunk ``x`` ``[B, H, 7]`` and times ``t`` ``[B]``."""
        angles = t[:, None] * self.time_frequencies[None, :]
        inputs = torch.cat([observation, x.flatten(1), torch.sin(angles), torch.cos(angles)], dim=1)
        out: torch.Tensor = self.velocity_net(inputs)
        return out.reshape(x.shape)

    def loss(
        self,
        images: torch.Tensor,
        proprio: torch.Tensor,
        chunks: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean squared error of the predicted velocity against ``noise - actions`` (normalized)."""
        target = (chunks - self.action_mean) / self.action_std
        noise = torch.randn(target.shape, generator=generator, device=target.device)
        uniform = torch.rand(target.shape[0], generator=generator, device=target.device)
        # Beta(alpha, 1) by its inverse CDF u^(1/alpha), then squeezed into [time_min, 1].
        t = uniform.pow(1.0 / self.config.time_alpha) * (1.0 - self.config.time_min) + self.config.time_min
        x_t = t[:, None, None] * noise + (1.0 - t[:, None, None]) * target
        prediction = self.velocity(self.observation(images, proprio), x_t, t)
        return functional.mse_loss(prediction, noise - target)

    def sample(
        self, images: torch.Tensor, proprio: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Actions ``[B, H, 7]`` integrated from ``noise`` (normalized ``[B, H, 7]``; None: zeros,
        the exported choice) at ``t = 1`` down to ``t = 0``."""
        observation = self.observation(images, proprio)
        steps = self.config.num_inference_steps
        x = (
            noise
            if noise is not None
            else proprio.new_zeros((proprio.shape[0], self.config.chunk_horizon, ACTION_DIM))
        )
        ones = torch.ones_like(proprio[:, 0])
        for step in range(steps):
            x = x - self.velocity(observation, x, ones * (1.0 - step / steps)) / steps
        return x * self.action_std + self.action_mean

    def forward(self, images: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        return self.sample(images, proprio)


class _DecoderLayer(nn.Module):
    """Pre-LayerNorm causal self-attention and MLP, each with a residual connection."""

    def __init__(self, config: AutoregressiveConfig) -> None:
        super().__init__()
        dim = config.model_dim
        self.num_heads = config.num_heads
        self.scale = 1.0 / math.sqrt(dim // config.num_heads)
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.projection = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, config.mlp_ratio * dim), nn.GELU(), nn.Linear(config.mlp_ratio * dim, dim)
        )

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None, causal: bool
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``x`` ``[B, T, D]``: new positions after ``past`` (keys and values ``[B, heads, P, D/heads]``
        of the earlier positions, or None). Returns the outputs ``[B, T, D]`` and the keys and values
        of all ``P + T`` positions. ``causal``: mask each new position from the later ones (needed
        when T > 1). Written out (no fused attention) so the decoding loop exports to plain ONNX
        operators."""
        batch, length, dim = x.shape
        heads = self.num_heads
        q, k, v = (
            part.reshape(batch, length, heads, dim // heads).transpose(1, 2)
            for part in self.qkv(self.attention_norm(x)).chunk(3, dim=-1)
        )
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        scores = (q @ k.transpose(-1, -2)) * self.scale
        if causal:
            # Position i of the new ones sees every earlier position and itself.
            earlier = k.shape[2] - length
            allowed = torch.ones(length, k.shape[2], dtype=torch.bool, device=x.device).tril(earlier)
            scores = scores.masked_fill(~allowed, float("-inf"))
        attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, dim)
        x = x + self.projection(attended)
        return x + self.mlp(self.mlp_norm(x)), (k, v)


class AutoregressivePolicy(SftPolicy):
    """Autoregressive discretized-token action head (module docstring)."""

    head = "ar"
    config: AutoregressiveConfig
    action_low: torch.Tensor
    action_high: torch.Tensor

    def __init__(self, config: AutoregressiveConfig | None = None) -> None:
        super().__init__(config or AutoregressiveConfig())
        config = self.config
        self.prefix = nn.Linear(config.hidden_dim, config.model_dim)
        self.token_embedding = nn.Embedding(config.num_bins, config.model_dim)
        # Input position 0 is the observation, position i > 0 the token i - 1.
        self.position = nn.Parameter(0.02 * torch.randn(config.num_tokens, config.model_dim))
        self.layers = nn.ModuleList(_DecoderLayer(config) for _ in range(config.decoder_layers))
        self.norm = nn.LayerNorm(config.model_dim)
        self.logits = nn.Linear(config.model_dim, config.num_bins)
        self.register_buffer("action_low", torch.zeros(ACTION_DIM))
        self.register_buffer("action_high", torch.ones(ACTION_DIM))

    def set_action_statistics(self, actions: torch.Tensor) -> None:
        low, high = torch.quantile(actions, torch.tensor(self.config.quantiles), dim=0)
        # Widen a (nearly) constant value's range symmetrically to MIN_BIN_RANGE.
        pad = torch.clamp(MIN_BIN_RANGE - (high - low), min=0.0) / 2.0
        self.action_low.copy_(low - pad)
        self.action_high.copy_(high + pad)

    @property
    def bin_width(self) -> torch.Tensor:
        """Width of each action value's bins ``[7]``."""
        return (self.action_high - self.action_low) / self.config.num_bins

    def tokenize(self, chunks: torch.Tensor) -> torch.Tensor:
        """``[B, H, 7]`` actions -> ``[B, H * 7]`` int64 bin indices (values beyond the bins'
        range go to the edge bins)."""
        index = torch.floor((chunks - self.action_low) / self.bin_width)
        return index.clamp(0, self.config.num_bins - 1).long().flatten(1)

    def detokenize(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, H * 7]`` bin indices -> ``[B, H, 7]`` actions at the bins' centres."""
        chunks = tokens.reshape(tokens.shape[0], self.config.chunk_horizon, ACTION_DIM)
        return self.action_low + (chunks.to(self.bin_width.dtype) + 0.5) * self.bin_width

    def _decode(
        self, x: torch.Tensor, past: list[tuple[torch.Tensor, torch.Tensor]] | None, causal: bool
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits ``[B, T, num_bins]`` of the inputs ``x`` ``[B, T, D]`` after the cached ``past``."""
        cache = []
        for index, layer in enumerate(self.layers):
            x, kv = layer(x, None if past is None else past[index], causal)
            cache.append(kv)
        logits: torch.Tensor = self.logits(self.norm(x))
        return logits, cache

    def token_logits(self, images: torch.Tensor, proprio: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the logits ``[B, H * 7, num_bins]`` of every token given the observation
        and the true tokens before it (``tokens`` ``[B, H * 7]``)."""
        prefix = self.prefix(self.observation(images, proprio))[:, None]
        inputs = torch.cat([prefix, self.token_embedding(tokens[:, :-1])], dim=1) + self.position
        logits, _ = self._decode(inputs, None, causal=True)
        return logits

    def loss(
        self,
        images: torch.Tensor,
        proprio: torch.Tensor,
        chunks: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Cross-entropy of the chunk's tokens under teacher forcing (no random draws)."""
        tokens = self.tokenize(chunks)
        logits = self.token_logits(images, proprio, tokens)
        return functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())

    def generate(self, images: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """Greedy decoding: ``[B, H * 7]`` tokens, each the most likely given the ones before."""
        x = self.prefix(self.observation(images, proprio))[:, None] + self.position[0]
        cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        tokens = []
        for index in range(self.config.num_tokens):
            logits, cache = self._decode(x, cache, causal=False)
            token = logits[:, -1].argmax(dim=-1)
            tokens.append(token)
            if index + 1 < self.config.num_tokens:
                x = self.token_embedding(token)[:, None] + self.position[index + 1]
        return torch.stack(tokens, dim=1)

    def forward(self, images: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        return self.detokenize(self.generate(images, proprio))


def make_policy(config: SftPolicyConfig) -> SftPolicy:
    """The model of ``config``'s head (a :class:`FlowMatchingConfig` or :class:`AutoregressiveConfig`)."""
    if isinstance(config, FlowMatchingConfig):
        return FlowMatchingPolicy(config)
    if isinstance(config, AutoregressiveConfig):
        return AutoregressivePolicy(config)
    raise TypeError(f"no head for a {type(config).__name__}; use FlowMatchingConfig or AutoregressiveConfig")


# ---- files ---------------------------------------------------------------------------------


def policy_weights(policy: SftPolicy) -> bytes:
    """``policy``'s state dict as a safetensors file with its head and config."""
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in policy.state_dict().items()}
    return save(state, metadata={"format": FORMAT, "head": policy.head, "config": policy.config.to_json()})


def save_policy(policy: SftPolicy, path: Path) -> Path:
    """Write :func:`policy_weights` to ``path`` atomically (a killed write leaves the old file)."""
    data = policy_weights(policy)
    return atomic_write(path, lambda out: out.write(data))


def read_policy_config(path: Path) -> tuple[Head, SftPolicyConfig]:
    """The head and config of a weights file, without loading its tensors; ValueError naming the
    file if it is not one."""
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
    except (OSError, SafetensorError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file: {exc}") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not an SFT policy's weights (no {FORMAT!r} format in its metadata)")
    head = metadata.get("head")
    if head not in HEADS:
        raise ValueError(f"{path}: unknown head {head!r} (expected one of {', '.join(HEADS)})")
    try:
        return head, CONFIGS[head].from_json(metadata["config"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: bad config in the metadata: {exc}") from None


def load_policy(path: Path) -> SftPolicy:
    """The model saved at ``path`` by :func:`save_policy`, in eval mode; ValueError naming the file
    if it is not one or its tensors do not fit its config."""
    _, config = read_policy_config(path)
    policy = make_policy(config)
    try:
        policy.load_state_dict(load(path.read_bytes()))
    except (RuntimeError, SafetensorError) as exc:
        raise ValueError(f"{path}: the weights do not fit the config: {exc}") from None
    return policy.eval()


def export_onnx(policy: SftPolicy, path: Path) -> Path:
    """Write ``policy`` as ONNX with the base-policy contract (module docstring; batch dynamic, the
    views' size static at ``config.image_size``) and metadata ``head``, ``config``, ``views`` and,
    for the flow head, ``noise`` (``zero``). Atomic: a killed export leaves the previous file."""
    config = policy.config
    height, width = config.image_size
    example = (
        torch.zeros((1, len(config.views), height, width, 3), dtype=torch.uint8),
        torch.zeros((1, PROPRIO_DIM), dtype=torch.float32),
    )
    was_training = policy.training
    policy.eval()
    try:
        with tempfile.TemporaryDirectory() as scratch, torch.no_grad():
            exported = Path(scratch) / "model.onnx"
            torch.onnx.export(
                policy,
                example,
                str(exported),
                input_names=[IMAGES, PROPRIO],
                output_names=[ACTIONS],
                dynamic_axes={IMAGES: {0: "batch"}, PROPRIO: {0: "batch"}, ACTIONS: {0: "batch"}},
                dynamo=False,
            )
            model = onnx.load(str(exported))
    finally:
        policy.train(was_training)
    props = {"head": policy.head, "config": config.to_json(), "views": ",".join(config.views)}
    if isinstance(policy, FlowMatchingPolicy):
        props["noise"] = "zero"
    model.metadata_props.extend(onnx.StringStringEntryProto(key=k, value=v) for k, v in props.items())

    def write(out: BinaryIO) -> None:
        out.write(model.SerializeToString())

    return atomic_write(path, write)
