"""ResNet-10 image encoder, as used by SERL / HIL-SERL and hence by PLD's residual actor and critic.

ResNet-10 is ResNet-18 with one basic block per stage instead of two: a 7x7 stride-2 stem and a
3x3 stride-2 max pool, then four stages of one basic block each (the first block of every stage
after the first halves the resolution), then a pooled embedding.

Input and output (the project's view convention, :mod:`pld_ros.core.observation`):

- :meth:`ResNet10Encoder.forward`: ``uint8 [B, H, W, 3]`` -> ``float32 [B, embedding_dim]``.
- :meth:`ResNet10Encoder.encode_views`: ``uint8 [B, V, H, W, 3]`` -> ``float32 [B, V * embedding_dim]``;
  every view goes through the same weights (one encoder shared by all cameras), and the embeddings
  are concatenated in view order, so the position in the vector says which camera it came from.

Both are plain tensor code without data-dependent control flow: the module exports with
``torch.onnx.export`` and compiles with ``torch.jit.script`` / ``torch.jit.trace``.

Widths and latency. ``bench/policy_latency.py`` on this project's 2-core CPU (shared with other
work, load average 3-5; 1 thread per model; two 128x128 views; 2000 iterations; two runs of the
halved widths, one of the paper widths), p50 / p99 in ms:

===========================  ==================  ==================
case                         halved (default)    paper widths
===========================  ==================  ==================
residual actor, ONNX         4.3-4.9 / 5.4-8.7   15.2 / 97
residual actor, torch        7.3-8.5 / 13-20     27.7 / 77
classifier, ONNX             4.3-4.9 / 8.5-9.3   18.9 / 101
both in series (ONNX)        10.0-10.3 / 17-42   28.1 / 68
===========================  ==================  ==================

The paper widths (``PAPER_WIDTHS``, about 4x the multiply-adds) cannot meet the issue's goal of
p99 <= 15 ms for residual + classifier per tick on this CPU; the halved widths (``DEFAULT_WIDTHS``,
our default) meet it when the two models run in their two nodes side by side, each on a core
(each p99 < 10 ms), and miss it under load when one core runs both in series. Select the paper widths with
``ResNet10Config(widths=PAPER_WIDTHS)`` where a GPU runs the models or a pretrained paper-width
encoder is loaded.
"""

# No "from __future__ import annotations": TorchScript must read the buffers' class annotations.
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import nn

PAPER_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)
"""Stage widths of the SERL / HIL-SERL ResNet-10 (the torchvision ResNet-18 widths)."""
DEFAULT_WIDTHS: tuple[int, int, int, int] = (32, 64, 128, 256)
"""Our default: halved widths, about a quarter of the compute (see the module docstring)."""

C = TypeVar("C")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ResNet10Config:
    """Hyperparameters of :class:`ResNet10Encoder`."""

    widths: tuple[int, ...] = DEFAULT_WIDTHS
    """Output channels of each stage (one basic block per stage); the stem has ``widths[0]``.
    Four stages as in the paper; PAPER_WIDTHS are the paper's, DEFAULT_WIDTHS our lighter choice."""
    norm: Literal["group", "batch"] = "group"
    """Normalization after every convolution. "group" (GroupNorm, our default, as SERL's ResNet-10)
    normalizes each sample on its own: RL batches mix offline and online data whose statistics
    drift, a single-image inference batch has no statistics at all, and train and eval modes give
    the same output. "batch" (BatchNorm) is offered for loading ImageNet-style weights; it must be
    put in eval mode for inference."""
    num_groups: int = 4
    """Groups of every GroupNorm (SERL uses 4); each width must be divisible by it."""
    embedding_dim: int = 256
    """Size of each view's embedding: global average pool, then a linear layer to this size, then
    LayerNorm and tanh (our choice; SERL uses a learned spatial embedding to a 256 bottleneck)."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel mean (RGB, on images scaled to [0, 1]) subtracted from the input."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel standard deviation (RGB, on [0, 1]) the centred input is divided by. ImageNet
    statistics, as SERL, so that a pretrained encoder sees what it was trained on."""

    def __post_init__(self) -> None:
        if not self.widths or any(width <= 0 for width in self.widths):
            raise ValueError(f"widths must be positive stage widths, got {self.widths}")
        if self.norm == "group" and any(width % self.num_groups for width in self.widths):
            raise ValueError(
                f"every width in {self.widths} must be a multiple of num_groups={self.num_groups}"
            )
        if self.embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be positive, got {self.embedding_dim}")
        if min(self.std) <= 0.0:
            raise ValueError(f"std must be positive, got {self.std}")


def tuples(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with JSON lists turned back into the tuples a frozen config holds."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}


def config_from_json(config: Callable[..., C], text: str, what: str) -> C:
    """A model config (one with an ``encoder`` field) saved as JSON; ValueError naming ``what``
    if ``text`` is not one."""
    try:
        data: dict[str, Any] = json.loads(text)
        encoder = ResNet10Config(**tuples(data.pop("encoder")))
        return config(encoder=encoder, **tuples(data))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a {what} config: {exc}") from None


def _norm(config: ResNet10Config, channels: int) -> nn.Module:
    if config.norm == "group":
        return nn.GroupNorm(config.num_groups, channels)
    return nn.BatchNorm2d(channels)


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection (projected when the shape changes)."""

    def __init__(self, config: ResNet10Config, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(config, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(config, out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                _norm(config, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class ResNet10Encoder(nn.Module):
    """uint8 images ``[B, H, W, 3]`` -> embeddings ``[B, embedding_dim]`` (see the module docstring)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: ResNet10Config | None = None) -> None:
        super().__init__()
        self.config = config or ResNet10Config()
        # A plain int (not read through the config) so that TorchScript can compile encode_views.
        self.embedding_dim = self.config.embedding_dim
        widths = self.config.widths
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False),
            _norm(self.config, widths[0]),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        blocks = []
        in_channels = widths[0]
        for index, width in enumerate(widths):
            blocks.append(_BasicBlock(self.config, in_channels, width, stride=1 if index == 0 else 2))
            in_channels = width
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Linear(widths[-1], self.config.embedding_dim),
            nn.LayerNorm(self.config.embedding_dim),
            nn.Tanh(),
        )
        # Buffers, so they follow .to(device) and are part of an exported graph; not persistent,
        # so a state dict holds learned weights only and the config stays the one source of them.
        self.register_buffer("mean", torch.tensor(self.config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.config.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, H, W, 3]`` -> ``float32 [B, embedding_dim]``."""
        x = images.permute(0, 3, 1, 2).float().div(255.0)
        x = (x - self.mean) / self.std
        x = self.stages(self.stem(x))
        embedding: torch.Tensor = self.head(x.mean(dim=(2, 3)))
        return embedding

    @torch.jit.export
    def encode_views(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, V, H, W, 3]`` -> ``float32 [B, V * embedding_dim]``, views in order, shared weights."""
        batch, views = images.shape[0], images.shape[1]
        # One batch of B*V images: one pass through the network instead of V.
        embeddings = self.forward(images.reshape(batch * views, images.shape[2], images.shape[3], 3))
        return embeddings.reshape(batch, views * self.embedding_dim)
