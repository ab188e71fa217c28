"""What an exported reward classifier says about itself: views, heads, operating thresholds.

``pld reward train`` writes :class:`RewardModelMetadata` into the ONNX file's ``metadata_props``
(:func:`~pld_ros.training.reward_classifier.export_reward_model`); the profile reads the thresholds
back when a stage gives none (:class:`~pld_ros.profile.Reward`), and the reward node checks the
views and logs the thresholds. This module imports neither torch nor onnxruntime, so loading a
profile stays light; ``onnx`` is imported only when a file is read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RewardModelMetadata:
    """What :func:`~pld_ros.training.reward_classifier.export_reward_model` stores in the ONNX
    file's metadata (``metadata_props``, string values, JSON where structured) besides the I/O
    contract."""

    views: tuple[str, ...]
    """Input views in order (key ``views``)."""
    heads: tuple[str, ...]
    """Output heads in order (key ``heads``)."""
    thresholds: tuple[float, ...]
    """Operating threshold per head, in (0, 1): a frame counts as positive above it (key
    ``thresholds``)."""
    precision_target: float
    """The validation precision the thresholds were chosen for (key ``precision_target``)."""
    boundary_ticks: int = 0
    """Frames at each label change the training left out (key ``boundary_ticks``)."""
    held_out_episodes: tuple[str, ...] = ()
    """The test split's episode ids (key ``held_out_episodes``): ``pld reward eval --held-out``
    scores these alone."""
    training: str = ""
    """JSON summary of the split and the rounds (key ``training``), for the record."""

    def props(self) -> dict[str, str]:
        """The metadata as ONNX ``metadata_props`` entries."""
        return {
            "views": json.dumps(list(self.views)),
            "heads": json.dumps(list(self.heads)),
            "thresholds": json.dumps(list(self.thresholds)),
            "precision_target": json.dumps(self.precision_target),
            "boundary_ticks": json.dumps(self.boundary_ticks),
            "held_out_episodes": json.dumps(list(self.held_out_episodes)),
            "training": self.training,
        }

    @staticmethod
    def from_props(props: Mapping[str, str], source: str) -> RewardModelMetadata:
        """Parse the metadata of ``source`` (a file name, for errors); ValueError naming the key."""
        values: dict[str, object] = {}
        for key in ("views", "heads", "thresholds", "precision_target"):
            if key not in props:
                raise ValueError(
                    f"{source}: no {key!r} in the model's metadata (not written by pld reward train)"
                )
            try:
                values[key] = json.loads(props[key])
            except json.JSONDecodeError as exc:
                raise ValueError(f"{source}: metadata {key!r} is not JSON: {exc}") from exc
        try:
            held_out = json.loads(props.get("held_out_episodes", "[]"))
            metadata = RewardModelMetadata(
                views=tuple(str(v) for v in values["views"]),  # type: ignore[attr-defined]
                heads=tuple(str(h) for h in values["heads"]),  # type: ignore[attr-defined]
                thresholds=tuple(float(t) for t in values["thresholds"]),  # type: ignore[attr-defined]
                precision_target=float(values["precision_target"]),  # type: ignore[arg-type]
                boundary_ticks=int(json.loads(props.get("boundary_ticks", "0"))),
                held_out_episodes=tuple(str(e) for e in held_out),
                training=props.get("training", ""),
            )
        except (TypeError, ValueError, json.JSONDecodeError) as exc:
            raise ValueError(f"{source}: malformed reward-model metadata: {exc}") from exc
        if len(metadata.thresholds) != len(metadata.heads):
            raise ValueError(
                f"{source}: {len(metadata.thresholds)} thresholds for {len(metadata.heads)} heads"
            )
        if not all(0.0 < t < 1.0 for t in metadata.thresholds):
            raise ValueError(
                f"{source}: metadata thresholds {list(metadata.thresholds)} are not all in (0, 1)"
            )
        return metadata

    @staticmethod
    def from_map(props: Mapping[str, str], source: str) -> RewardModelMetadata | None:
        """:meth:`from_props`, or None for a model whose metadata holds no thresholds (one not
        exported by ``pld reward train``)."""
        return RewardModelMetadata.from_props(props, source) if "thresholds" in props else None


def read_reward_metadata(path: Path) -> RewardModelMetadata | None:
    """The metadata of the ONNX file ``path``, or None when it holds none; ValueError naming the
    file when it cannot be read or its metadata is malformed."""
    import onnx  # here: a profile that names no model never pays for the import

    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such model file") from None
    except Exception as exc:  # onnx raises protobuf's DecodeError and OSError subclasses
        raise ValueError(f"{path}: not a readable ONNX model: {exc}") from None
    return RewardModelMetadata.from_map({p.key: p.value for p in model.metadata_props}, str(path))
