"""PLD's residual actor: a tanh-Gaussian policy over a correction of the base policy's action.

Inputs (conventions of :mod:`pld_ros.core.observation`): the policy views ``uint8 [B, V, H, W, 3]``,
the proprioception ``[B, 8]`` and the base action ``[B, 7]``. Each view goes through one shared
ResNet-10 (:mod:`pld_ros.models.resnet10`); the embeddings, the proprioception's features
(:mod:`pld_ros.models.proprio`) and the base action are concatenated and go through
``num_layers`` blocks of Linear -> LayerNorm -> tanh of ``hidden_dim`` units, then two linear heads
give the mean and log standard deviation of a Gaussian over 7 pre-tanh dimensions.

The residual ``r = tanh(u)`` lies in ``[-1, 1]^7``: normalized units, as in PLD, where actions are
normalized to ``[-1, 1]``. :attr:`ResidualActorConfig.residual_scale` maps them back to the action's
units, one factor per dimension, and the executed action is ``base + xi * residual_scale * r``
(see :mod:`pld_ros.policies.residual`). With the scale set to the arm's largest step per tick
(translation ``max_translation_step``, rotation ``max_rotation_step``, gripper 1, the full closure
range), ``xi`` is the fraction of the largest possible step the residual may add.

A fresh actor's mean head is zero, so its deterministic residual is exactly zero: an untrained
actor leaves the base policy's actions as they are.

Without a camera (``num_views=0``, e.g. a simulator benchmark on state observations) there is no
encoder, ``images`` is None, and with ``state_dim`` set the state vector of that size enters the
trunk as it is instead of the proprioception's features.

Weights are saved as safetensors (the state dict) with string metadata: ``version``, ``updates``
(learner updates that produced them; the xi schedule reads it) and ``config`` (this config as JSON).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

from pld_ros.core.observation import ACTION_DIM
from pld_ros.models.proprio import PROPRIO_FEATURE_DIM, proprio_features
from pld_ros.models.resnet10 import ResNet10Config, ResNet10Encoder, config_from_json

DEFAULT_RESIDUAL_SCALE: tuple[float, ...] = (0.02, 0.02, 0.02, 0.1, 0.1, 0.1, 1.0)
"""The profile's default safety steps: 0.02 m translation, 0.1 rad rotation, the full gripper range."""


@dataclass(frozen=True)
class ResidualActorConfig:
    """Hyperparameters of :class:`ResidualActor`."""

    encoder: ResNet10Config = field(default_factory=ResNet10Config)
    """The image encoder shared by all views."""
    num_views: int = 2
    """Views stacked in the input, in the profile's view order (policies.base.views); 0: no images
    and no encoder (state-only learning)."""
    state_dim: int | None = None
    """None: the state is the arm's proprioception ``[8]`` and enters as its features
    (:mod:`pld_ros.models.proprio`); a number: a generic state vector of that size (a simulator's
    state) that enters as it is."""
    hidden_dim: int = 256
    """Units of each hidden layer (PLD: 256)."""
    num_layers: int = 3
    """Hidden Linear -> LayerNorm -> tanh blocks before the output heads (PLD: 3)."""
    log_std_min: float = -5.0
    """Lower clamp of the log standard deviation (std >= 0.0067): the usual SAC bound, keeps the
    log-probability finite."""
    log_std_max: float = 2.0
    """Upper clamp of the log standard deviation (std <= 7.4): beyond it tanh saturates anyway."""
    init_log_std: float = -1.0
    """Log standard deviation of a fresh actor (std 0.37 in pre-tanh units; our choice): some
    exploration on top of a zero mean."""
    residual_scale: tuple[float, ...] = DEFAULT_RESIDUAL_SCALE
    """Action units of a residual of 1, per dimension (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.num_views < 0 or self.hidden_dim <= 0 or self.num_layers <= 0:
            raise ValueError("hidden_dim and num_layers must be positive, num_views non-negative")
        if self.state_dim is not None and self.state_dim <= 0:
            raise ValueError(f"state_dim must be positive, got {self.state_dim}")
        if not self.log_std_min < self.log_std_max:
            raise ValueError(
                f"log_std_min ({self.log_std_min}) must be below log_std_max ({self.log_std_max})"
            )
        if not self.log_std_min <= self.init_log_std <= self.log_std_max:
            raise ValueError("init_log_std must lie within [log_std_min, log_std_max]")
        if len(self.residual_scale) != ACTION_DIM or min(self.residual_scale) < 0.0:
            raise ValueError(
                f"residual_scale must be {ACTION_DIM} non-negative factors, got {self.residual_scale}"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ResidualActorConfig:
        """The config saved by :meth:`to_json`; ValueError if it is not one."""
        return config_from_json(cls, text, "residual actor")

    @property
    def feature_dim(self) -> int:
        """Size of the observation's features: the views' embeddings, then the state's."""
        state = PROPRIO_FEATURE_DIM if self.state_dim is None else self.state_dim
        return self.num_views * self.encoder.embedding_dim + state


def observation_features(
    config: ResidualActorConfig,
    encoder: ResNet10Encoder | None,
    images: torch.Tensor | None,
    state: torch.Tensor,
) -> torch.Tensor:
    """``[B, config.feature_dim]``: the views through ``encoder`` (when the config has views), then
    the state (the proprioception's features, or the state vector as it is)."""
    state_features = proprio_features(state) if config.state_dim is None else state
    if encoder is None:
        return state_features
    if images is None:
        raise ValueError(f"this model takes {config.num_views} views, got no images")
    return torch.cat([encoder.encode_views(images), state_features], dim=-1)


def squashed_sample(mean: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A reparameterized ``tanh`` of a Gaussian sample in ``[-1, 1]`` and its log-probability
    (tanh-corrected, summed over the last dimension)."""
    std = log_std.exp()
    pre_tanh = mean + std * torch.randn_like(mean)
    residual = torch.tanh(pre_tanh)
    gaussian = -0.5 * ((pre_tanh - mean) / std) ** 2 - log_std - 0.5 * math.log(2.0 * math.pi)
    # log |d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), stable for large |u|.
    jacobian = 2.0 * (math.log(2.0) - pre_tanh - nn.functional.softplus(-2.0 * pre_tanh))
    return residual, (gaussian - jacobian).sum(dim=-1)


def mlp(in_dim: int, hidden_dim: int, num_layers: int) -> nn.Sequential:
    """``num_layers`` blocks of Linear -> LayerNorm -> tanh (the PLD actor's and classifier's trunk)."""
    layers: list[nn.Module] = []
    for index in range(num_layers):
        layers += [
            nn.Linear(in_dim if index == 0 else hidden_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.Tanh(),
        ]
    return nn.Sequential(*layers)


class ResidualActor(nn.Module):
    """Tanh-Gaussian residual policy (see the module docstring)."""

    encoder: ResNet10Encoder
    """The views' encoder; absent from an actor without views (see :attr:`image_encoder`)."""

    def __init__(self, config: ResidualActorConfig | None = None) -> None:
        super().__init__()
        self.config = config or ResidualActorConfig()
        if self.config.num_views:
            self.encoder = ResNet10Encoder(self.config.encoder)
        in_dim = self.config.feature_dim + ACTION_DIM
        self.trunk = mlp(in_dim, self.config.hidden_dim, self.config.num_layers)
        self.mean = nn.Linear(self.config.hidden_dim, ACTION_DIM)
        self.log_std = nn.Linear(self.config.hidden_dim, ACTION_DIM)
        # Zero mean and a constant std whatever the input: the untrained residual adds nothing
        # deterministic to the base policy; training moves the weights away from zero.
        for head, bias in ((self.mean, 0.0), (self.log_std, self.config.init_log_std)):
            nn.init.zeros_(head.weight)
            nn.init.constant_(head.bias, bias)

    @property
    def image_encoder(self) -> ResNet10Encoder | None:
        """The views' encoder, None without views."""
        encoder = self._modules.get("encoder")
        return encoder if isinstance(encoder, ResNet10Encoder) else None

    def features(self, images: torch.Tensor | None, state: torch.Tensor) -> torch.Tensor:
        """The observation's features ``[B, config.feature_dim]`` (see :func:`observation_features`)."""
        return observation_features(self.config, self.image_encoder, images, state)

    def head(self, features: torch.Tensor, base_action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clamped log std ``[B, 7]`` of the pre-tanh Gaussian from the observation's
        features: the learner calls it with features it encoded itself."""
        hidden = self.trunk(torch.cat([features, base_action], dim=-1))
        log_std = self.log_std(hidden).clamp(self.config.log_std_min, self.config.log_std_max)
        mean: torch.Tensor = self.mean(hidden)
        return mean, log_std

    def forward(
        self, images: torch.Tensor | None, proprio: torch.Tensor, base_action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clamped log std of the pre-tanh Gaussian, each ``[B, 7]``.

        ``images`` uint8 ``[B, V, H, W, 3]`` (None without views), ``proprio`` ``[B, 8]`` (or the
        state ``[B, state_dim]``), ``base_action`` ``[B, 7]``.
        """
        return self.head(self.features(images, proprio), base_action)

    def sample(
        self, images: torch.Tensor | None, proprio: torch.Tensor, base_action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterized residual in ``[-1, 1]`` and its log-probability ``[B]`` (tanh-corrected)."""
        return squashed_sample(*self(images, proprio, base_action))

    def act(
        self,
        images: torch.Tensor | None,
        proprio: torch.Tensor,
        base_action: torch.Tensor,
        deterministic: bool,
    ) -> torch.Tensor:
        """The residual in ``[-1, 1]``, ``[B, 7]``: tanh of the mean, or a sample."""
        if deterministic:
            mean, _ = self(images, proprio, base_action)
            return torch.tanh(mean)
        residual, _ = self.sample(images, proprio, base_action)
        return residual


def actor_metadata(config: ResidualActorConfig, version: int, updates: int) -> dict[str, str]:
    """The safetensors metadata of an actor's weights file."""
    return {"version": str(version), "updates": str(updates), "config": config.to_json()}


def actor_weights(actor: ResidualActor, version: int, updates: int) -> bytes:
    """``actor``'s state dict as a safetensors file's bytes, with its version, updates and config."""
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in actor.state_dict().items()}
    return save(state, metadata=actor_metadata(actor.config, version, updates))


def save_actor(actor: ResidualActor, path: Path, version: int, updates: int) -> None:
    """Write :func:`actor_weights` to ``path``."""
    path.write_bytes(actor_weights(actor, version, updates))
