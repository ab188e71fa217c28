"""The ONNX base-policy backend (onnxruntime; CUDA when this machine offers it, else the CPU).

Model I/O contract (the embedded simulation policy follows it too):

- input ``images``: uint8 ``[B, V, H, W, 3]``, the policy views stacked in the profile's view
  order (``policies.base.views``), rgb8 as :mod:`pld_ros.core.observation` defines them;
- input ``proprio``: float32 ``[B, 8]``, the proprioception vector of the same module;
- output ``actions``: float32 ``[B, H, 7]`` (an action chunk per batch item), or ``[B, 7]`` for a
  policy that predicts one action (H = 1).

The node calls it with B = 1. Static dimensions of the model's inputs (view count, image size,
channels) are checked against the profile and the observation, with an error naming the
mismatch; dynamic ones are accepted as they come.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pld_ros.core.observation import PROPRIO_DIM, Float32Array, Observation
from pld_ros.policies.onnx_runtime import inference_session

IMAGES, PROPRIO, ACTIONS = "images", "proprio", "actions"


def _static(dim: object) -> int | None:
    return dim if isinstance(dim, int) else None


class OnnxPolicy:
    """A base policy exported to ONNX; see the module docstring for its inputs and output."""

    def __init__(self, path: Path, views: Sequence[str], providers: Sequence[str] | None = None) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"ONNX base policy {path} does not exist")
        self.path = path
        self.views = tuple(views)
        try:
            self.session = inference_session(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise ValueError(f"{path}: not a loadable ONNX model: {exc}") from None
        self.providers: list[str] = self.session.get_providers()
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != {IMAGES, PROPRIO}:
            raise ValueError(
                f"{path}: a base policy takes the inputs {IMAGES!r} and {PROPRIO!r}, "
                f"this model takes {sorted(inputs)}"
            )
        outputs = [o.name for o in self.session.get_outputs()]
        if ACTIONS not in outputs:
            raise ValueError(f"{path}: a base policy has the output {ACTIONS!r}, this model has {outputs}")
        images, proprio = inputs[IMAGES], inputs[PROPRIO]
        if images.type != "tensor(uint8)" or len(images.shape) != 5:
            raise ValueError(
                f"{path}: input {IMAGES!r} must be uint8 [B, V, H, W, 3], is {images.type} {images.shape}"
            )
        if proprio.type != "tensor(float)" or len(proprio.shape) != 2:
            raise ValueError(
                f"{path}: input {PROPRIO!r} must be float32 [B, 8], is {proprio.type} {proprio.shape}"
            )
        view_count, height, width, channels = (_static(d) for d in images.shape[1:])
        if view_count is not None and view_count != len(self.views):
            raise ValueError(
                f"{path}: the model takes {view_count} views, the profile gives {len(self.views)} "
                f"({', '.join(self.views)})"
            )
        if channels is not None and channels != 3:
            raise ValueError(f"{path}: the model takes {channels} channels per image, views are rgb8 (3)")
        if (dim := _static(proprio.shape[1])) is not None and dim != PROPRIO_DIM:
            raise ValueError(f"{path}: the model takes {dim} proprioception values, not {PROPRIO_DIM}")
        self.image_size = (height, width)
        """Static (H, W) of the model's images; None where the model accepts any."""

    @property
    def name(self) -> str:
        return f"onnx:{self.path.name}"

    @property
    def connected(self) -> bool:
        return True

    def infer(self, observation: Observation) -> Float32Array:
        images = observation.stacked_views(self.views)
        height, width = self.image_size
        if (height is not None and images.shape[1] != height) or (
            width is not None and images.shape[2] != width
        ):
            raise ValueError(
                f"{self.name} takes {height}x{width} images (H x W), the views are "
                f"{images.shape[1]}x{images.shape[2]}: set the cameras' policy_view size"
            )
        feed = {
            IMAGES: np.ascontiguousarray(images[None], dtype=np.uint8),
            PROPRIO: np.asarray(observation.proprio, dtype=np.float32)[None],
        }
        (actions,) = self.session.run([ACTIONS], feed)
        result: Float32Array = np.asarray(actions, dtype=np.float32)[0]
        return result

    def reset(self) -> None:
        """Nothing to do: the model keeps no state between calls."""

    def close(self) -> None:
        """Nothing to release beyond what the garbage collector frees."""
