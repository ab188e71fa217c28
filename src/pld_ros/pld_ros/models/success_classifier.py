"""Success classifier: camera views -> one success probability per stage head.

Each view goes through one shared ResNet-10 (:mod:`pld_ros.models.resnet10`); the embeddings are
concatenated in view order and go through a 3-layer MLP (Linear -> LayerNorm -> tanh blocks) and a
linear layer to ``num_heads`` logits; a sigmoid turns each into a probability. A profile's stage
reads head ``Stage.head``, so ``num_heads`` is one more than the largest head of the profile's
stages.

ONNX contract (what :func:`export_onnx` writes and the reward node relies on):

- input ``images``: uint8 ``[B, V, H, W, 3]``, the profile's ``reward.views`` in order, rgb8 policy
  views; B is dynamic, V, H and W are fixed at export.
- output ``probabilities``: float32 ``[B, num_heads]`` in ``[0, 1]``.

The torch backend of the reward node loads a safetensors state dict of :class:`SuccessClassifier`
whose metadata holds this config as JSON (``config``), written by :func:`save_classifier`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from pld_ros.models.residual_actor import mlp
from pld_ros.models.resnet10 import ResNet10Config, ResNet10Encoder, config_from_json

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"


@dataclass(frozen=True)
class SuccessClassifierConfig:
    """Hyperparameters of :class:`SuccessClassifier`."""

    encoder: ResNet10Config = field(default_factory=ResNet10Config)
    """The image encoder shared by all views."""
    num_views: int = 2
    """Views stacked in the input, in the profile's ``reward.views`` order."""
    num_heads: int = 1
    """Outputs, one per stage head (1 + the largest ``Stage.head`` of the profile)."""
    hidden_dim: int = 256
    """Units of each hidden layer (as the residual actor; our choice)."""
    num_layers: int = 3
    """Hidden Linear -> LayerNorm -> tanh blocks (the issue's 3-layer MLP)."""

    def __post_init__(self) -> None:
        if min(self.num_views, self.num_heads, self.hidden_dim, self.num_layers) <= 0:
            raise ValueError("num_views, num_heads, hidden_dim and num_layers must be positive")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SuccessClassifierConfig:
        """The config saved by :meth:`to_json`; ValueError if it is not one."""
        return config_from_json(cls, text, "success classifier")


class SuccessClassifier(nn.Module):
    """``uint8 [B, V, H, W, 3]`` -> probabilities ``[B, num_heads]`` (see the module docstring)."""

    def __init__(self, config: SuccessClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or SuccessClassifierConfig()
        self.encoder = ResNet10Encoder(self.config.encoder)
        self.trunk = mlp(
            self.config.num_views * self.config.encoder.embedding_dim,
            self.config.hidden_dim,
            self.config.num_layers,
        )
        self.logits = nn.Linear(self.config.hidden_dim, self.config.num_heads)

    def forward_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_heads]``, for training with a numerically stable BCE-with-logits loss."""
        logits: torch.Tensor = self.logits(self.trunk(self.encoder.encode_views(images)))
        return logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward_logits(images))


class _Probabilities(nn.Module):
    # Exports forward alone, with the contract's names.
    def __init__(self, model: SuccessClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probabilities: torch.Tensor = self.model(images)
        return probabilities


def export_onnx(model: SuccessClassifier, path: Path, views: int, height: int, width: int) -> None:
    """Write ``model`` as ONNX with the module's I/O contract, for ``views`` views of height x width."""
    if views != model.config.num_views:
        raise ValueError(f"the model takes {model.config.num_views} views, not {views}")
    was_training = model.training
    model.eval()
    try:
        example = torch.zeros((1, views, height, width, 3), dtype=torch.uint8)
        torch.onnx.export(
            _Probabilities(model),
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            dynamo=False,
        )
    finally:
        model.train(was_training)


def save_classifier(model: SuccessClassifier, path: Path) -> None:
    """Write ``model``'s state dict as safetensors with its config (the reward node's torch backend)."""
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    save_file(state, str(path), metadata={"config": model.config.to_json()})
