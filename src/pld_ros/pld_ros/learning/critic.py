"""PLD's critic: two Q-networks over (observation, base action, residual), clipped double Q.

The observation is encoded as the actor encodes it
(:func:`~pld_ros.models.residual_actor.observation_features` with the actor's config): with views,
one ResNet-10 shared by both Q-heads and trained by the critic loss; without, the state as the
actor sees it. Each head is ``num_layers`` blocks of Linear -> LayerNorm -> tanh (the actor's
trunk) and a linear output.

Features and heads are separate calls, so that the learner encodes a batch once and evaluates the
heads on many residuals per observation (the on-the-fly backup, Cal-QL's sampled actions).
"""

from __future__ import annotations

import torch
from torch import nn

from pld_ros.core.observation import ACTION_DIM
from pld_ros.models.residual_actor import ResidualActorConfig, mlp, observation_features
from pld_ros.models.resnet10 import ResNet10Encoder

NUM_Q = 2
"""Q-networks of the clipped double Q (SAC's two)."""


class Critic(nn.Module):
    """Two Q-networks sharing one observation encoder (see the module docstring)."""

    def __init__(self, observation: ResidualActorConfig, hidden_dim: int, num_layers: int) -> None:
        super().__init__()
        self.observation = observation
        self.encoder: ResNet10Encoder | None = (
            ResNet10Encoder(observation.encoder) if observation.num_views else None
        )
        in_dim = observation.feature_dim + 2 * ACTION_DIM
        self.heads = nn.ModuleList(
            nn.Sequential(mlp(in_dim, hidden_dim, num_layers), nn.Linear(hidden_dim, 1)) for _ in range(NUM_Q)
        )

    def features(self, images: torch.Tensor | None, state: torch.Tensor) -> torch.Tensor:
        """``[B, feature_dim]``: the observation through this critic's encoder."""
        return observation_features(self.observation, self.encoder, images, state)

    def q_values(
        self, features: torch.Tensor, base_action: torch.Tensor, residual: torch.Tensor
    ) -> torch.Tensor:
        """``[NUM_Q, B]``: each head's Q of the residual on top of the base action."""
        inputs = torch.cat([features, base_action, residual], dim=-1)
        return torch.stack([head(inputs).squeeze(-1) for head in self.heads])
