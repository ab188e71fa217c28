"""The TorchScript base-policy backend: a module saved with ``torch.jit.save``, run on CUDA when present.

The module follows the ONNX backend's contract (:mod:`pld_ros.policies.onnx_policy`):
``forward(images, proprio) -> actions`` with ``images`` uint8 ``[B, V, H, W, 3]`` in the
profile's view order, ``proprio`` float32 ``[B, 8]``, and ``actions`` float32 ``[B, H, 7]``
(or ``[B, 7]`` for H = 1). A TorchScript module does not declare its input shapes, so a mismatch
shows at the first call, as an error naming the shapes the module was given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pld_ros.core.observation import Float32Array, Observation


class TorchPolicy:
    """A base policy scripted with TorchScript; see the module docstring for its contract."""

    def __init__(self, path: Path, views: Sequence[str], device: str | None = None) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"TorchScript base policy {path} does not exist")
        self.path = path
        self.views = tuple(views)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            self.module = torch.jit.load(str(path), map_location=self.device)  # type: ignore[no-untyped-call]
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"{path}: not a TorchScript module: {exc}") from None
        self.module.eval()

    @property
    def name(self) -> str:
        return f"torch:{self.path.name}"

    @property
    def connected(self) -> bool:
        return True

    def infer(self, observation: Observation) -> Float32Array:
        images = torch.from_numpy(np.ascontiguousarray(observation.stacked_views(self.views))[None])
        proprio = torch.from_numpy(np.asarray(observation.proprio, dtype=np.float32)[None])
        try:
            with torch.inference_mode():
                actions = self.module(images.to(self.device), proprio.to(self.device))
        except Exception as exc:  # TorchScript raises torch.jit.Error, which is no RuntimeError
            raise ValueError(
                f"{self.name} failed on images {list(images.shape)} uint8 and proprio "
                f"{list(proprio.shape)} float32: {exc}"
            ) from None
        if not isinstance(actions, torch.Tensor):
            raise ValueError(f"{self.name} returned a {type(actions).__name__}, expected a tensor")
        result: Float32Array = actions.detach().to("cpu", torch.float32).numpy()[0]
        return result

    def reset(self) -> None:
        """Nothing to do: the module keeps no state between calls."""

    def close(self) -> None:
        """Nothing to release beyond what the garbage collector frees."""
