"""Reward classifier node: one ``reward/scores`` per control tick, one probability per stage head.

Each ``<arm>/state`` of the control arm is a tick. The node takes the newest matched views of
``reward.views`` and publishes the classifier's probabilities (``SuccessScores``, stamped with the
views' capture time). A stale camera publishes nothing that tick and is reported on /diagnostics
(``pld/reward``): a score computed from an old image would tell the supervisor about the past.

Backends (``reward.backend``):

- ``onnx``: ``reward.path`` is an ONNX file with the contract of
  :mod:`pld_ros.models.success_classifier` (``images`` uint8 [B, V, H, W, 3] -> ``probabilities``
  float32 [B, heads]); onnxruntime, on CUDA when its provider is present.
- ``torch``: ``reward.path`` is a safetensors state dict of
  :class:`~pld_ros.models.success_classifier.SuccessClassifier` with its config in the metadata
  (``save_classifier``). A state dict rather than TorchScript: it cannot run code when loaded and
  it is what the trainer writes anyway.
- ``privileged`` (simulation): the simulator's ground truth stands in for the classifier,
  ``privileged`` true. A multi-stage world publishes ``sim/stage_success`` (SuccessScores, one
  value per head): its values are used, head by head; a single-stage world publishes
  ``sim/success`` (std_msgs/Bool): 1.0 or 0.0 on every head. Once a ``sim/stage_success`` has
  arrived it is the one used. Until the first of them arrives nothing is published, nor while the
  world's scores have fewer values than the stages' heads (counted and reported).

The model must have at least 1 + the largest ``head`` of the profile's stages outputs; this is
checked at start with one inference on a blank input (which also warms the model up).

Decision thresholds: the node publishes probabilities; the supervisor's stage machine applies each
stage's threshold. A stage without one in the profile takes the model's own threshold of its head,
which the profile reads from the ONNX metadata when it loads (:class:`~pld_ros.profile.Reward`
has the rule), so both nodes use the same number. The node reads the metadata again from its
own session and logs, per stage, the threshold in force and where it comes from (the model's, or
the profile's overriding the model's X, or the profile's for a model without thresholds); the
same goes to /diagnostics (``thresholds``). A model whose metadata names other views than
``reward.views`` (in order) is refused: it would score images it was not trained on.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node
from std_msgs.msg import Bool

from pld_msgs.msg import RobotState, SuccessScores
from pld_ros.core.frame_sync import NoSet
from pld_ros.models.success_classifier import (
    INPUT_NAME,
    OUTPUT_NAME,
    SuccessClassifier,
    SuccessClassifierConfig,
)
from pld_ros.nodes.diagnostics import diagnostics_publisher, publish_status
from pld_ros.nodes.heartbeat import start_heartbeat
from pld_ros.nodes.observations import ViewCache
from pld_ros.nodes.runner import NodeConfigError, control_arm, load_node_profile, run_node
from pld_ros.policies.onnx_runtime import inference_session
from pld_ros.policies.weights import WeightsError, check_tensors, load_local
from pld_ros.profile import Stage
from pld_ros.training.reward_metadata import RewardModelMetadata

Classifier = Callable[[np.ndarray], np.ndarray]
"""uint8 [B, V, H, W, 3] -> float32 [B, heads]."""
LATENCY_WINDOW = 1000
"""Ticks over which the inference-time percentiles are computed."""


class LoadedClassifier(NamedTuple):
    classify: Classifier
    device: str
    """The onnxruntime provider, or "torch cpu"."""
    metadata: RewardModelMetadata | None
    """What ``pld reward train`` wrote into the model, None for a model without it."""


def onnx_classifier(path: Path) -> LoadedClassifier:
    """An onnxruntime session with the success classifier's I/O contract, its provider and its
    metadata."""
    # One core: on a small robot computer the residual actor and the rest of the graph need the others.
    try:
        session = inference_session(str(path), threads=1)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        raise NodeConfigError(f"reward.path: {path}: cannot load the ONNX model: {exc}") from None
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
        raise NodeConfigError(
            f"reward.path: {path}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, "
            f"the model has inputs {inputs} and outputs {outputs}"
        )

    try:
        metadata = RewardModelMetadata.from_map(session.get_modelmeta().custom_metadata_map, str(path))
    except ValueError as exc:
        raise NodeConfigError(f"reward.path: {exc}") from None

    def classify(images: np.ndarray) -> np.ndarray:
        (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: images})
        return np.asarray(probabilities, dtype=np.float32)

    return LoadedClassifier(classify, session.get_providers()[0], metadata)


def torch_classifier(path: Path) -> LoadedClassifier:
    """A :class:`SuccessClassifier` from a safetensors state dict with its config in the metadata."""
    try:
        weights = load_local(path)
        config = SuccessClassifierConfig.from_json(weights.metadata.get("config", ""))
        model = SuccessClassifier(config).eval()
        check_tensors(weights.tensors, model.state_dict(), str(path))
    except (WeightsError, ValueError) as exc:
        raise NodeConfigError(f"reward.path: {exc}") from None
    model.load_state_dict(weights.tensors)
    # One core, as the ONNX backend (torch would take them all by default).
    torch.set_num_threads(1)

    def classify(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(images)).numpy()

    return LoadedClassifier(classify, "torch cpu", None)


def threshold_sources(stages: Sequence[Stage], metadata: RewardModelMetadata | None) -> list[str]:
    """Per stage, ``name=threshold (source)``: ``model`` when the stage's threshold is the model's
    own for its head, ``profile, model X`` when the profile's overrides the model's X,
    ``profile`` when the model has no threshold for the head (or there is no model)."""
    sources = []
    for stage in stages:
        own = metadata.thresholds[stage.head] if metadata and stage.head < len(metadata.thresholds) else None
        if own is None:
            source = "profile"
        elif own == stage.threshold:  # the very float the profile read from the same metadata
            source = "model"
        else:
            source = f"profile, model {own:g}"
        sources.append(f"{stage.name}={stage.threshold:g} ({source})")
    return sources


def to_time(stamp: float) -> Time:
    sec = math.floor(stamp)
    return Time(sec=int(sec), nanosec=int((stamp - sec) * 1e9))


class RewardClassifierNode(Node):
    def __init__(self) -> None:
        super().__init__("reward_classifier")
        profile = load_node_profile(self)
        arm = control_arm(profile)
        if profile.reward is None:
            raise NodeConfigError(f"profile {profile.name!r} has no 'reward' section")
        reward = profile.reward
        self.backend = reward.backend
        self.num_heads = 1 + max(stage.head for stage in reward.stages)
        self.counters = {
            "ticks": 0,
            "published": 0,
            "stale_camera_ticks": 0,
            "no_success_ticks": 0,
            "short_stage_success_ticks": 0,
        }
        self._last_stale = ""
        self._inference: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._success: bool | None = None
        self._stage_success: list[float] | None = None
        self._classify: Classifier | None = None
        self._scores_pub = self.create_publisher(SuccessScores, "reward/scores", 10)
        self._diag_pub = diagnostics_publisher(self)

        metadata = None
        if reward.backend == "privileged":
            self.device = "simulator"
            self.create_subscription(Bool, "sim/success", self._on_success, 10)
            self.create_subscription(SuccessScores, "sim/stage_success", self._on_stage_success, 10)
        else:
            assert reward.path is not None  # the profile requires it for these backends
            cameras = [profile.cameras[view] for view in reward.views]
            loader = onnx_classifier if reward.backend == "onnx" else torch_classifier
            self._classify, self.device, metadata = loader(reward.path)
            if metadata is not None and metadata.views != tuple(reward.views):
                raise NodeConfigError(
                    f"reward.path: {reward.path} was trained on views {list(metadata.views)}, "
                    f"reward.views are {list(reward.views)}"
                )
            height, width = cameras[0].policy_view.height, cameras[0].policy_view.width
            self._check_heads(np.zeros((1, len(cameras), height, width, 3), np.uint8))
            self.views = ViewCache(
                self,
                reward.views,
                stale_after=min(c.stale_after for c in cameras),
                frame_period=max(1.0 / c.fps for c in cameras),
            )
        self.create_subscription(RobotState, f"{arm}/state", self._on_state, 10)
        self.create_timer(1.0, self._publish_diagnostics)
        start_heartbeat(self)
        self.thresholds = ", ".join(threshold_sources(reward.stages, metadata))
        self.get_logger().info(
            f"reward classifier ({reward.backend}, {self.device}) on {arm}/state, {self.num_heads} "
            f"head(s); thresholds {self.thresholds}"
        )

    def _check_heads(self, blank: np.ndarray) -> None:
        assert self._classify is not None
        try:
            out = self._classify(blank)
        except Exception as exc:  # a model that cannot run on the profile's views is a config error
            raise NodeConfigError(
                f"reward.path: the classifier fails on {blank.shape[1:]} views: {exc}"
            ) from None
        if out.ndim != 2 or out.shape[0] != 1 or out.shape[1] < self.num_heads:
            raise NodeConfigError(
                f"reward.path: the classifier outputs {tuple(out.shape)}, "
                f"the stages need [1, >= {self.num_heads}]"
            )

    def _on_success(self, message: Bool) -> None:
        self._success = bool(message.data)

    def _on_stage_success(self, message: SuccessScores) -> None:
        self._stage_success = [float(p) for p in message.probabilities]

    def _on_state(self, state: RobotState) -> None:
        self.counters["ticks"] += 1
        if self._classify is None:
            self._privileged(state)
            return
        now = self.get_clock().now().nanoseconds * 1e-9
        views = self.views.newest(now)
        if isinstance(views, NoSet):
            self.counters["stale_camera_ticks"] += 1
            if views.reason != self._last_stale:
                self.get_logger().warning(f"no scores: {views.reason}")
            self._last_stale = views.reason
            return
        self._last_stale = ""
        images = np.stack([views.items[name] for name in self.views.views])[np.newaxis]
        started = time.perf_counter()
        probabilities = self._classify(images)[0]
        elapsed = time.perf_counter() - started
        self._inference.append(elapsed)
        self._publish(to_time(views.stamp), probabilities, elapsed, privileged=False)

    def _privileged(self, state: RobotState) -> None:
        if self._stage_success is not None:
            if len(self._stage_success) < self.num_heads:
                self.counters["short_stage_success_ticks"] += 1
                self.get_logger().error(
                    f"sim/stage_success has {len(self._stage_success)} value(s), the stages need "
                    f"{self.num_heads}: no scores",
                    throttle_duration_sec=5.0,
                )
                return
            probabilities = np.asarray(self._stage_success[: self.num_heads], np.float32)
        elif self._success is not None:
            probabilities = np.full(self.num_heads, 1.0 if self._success else 0.0, np.float32)
        else:
            self.counters["no_success_ticks"] += 1
            return
        self._publish(state.header.stamp, probabilities, 0.0, privileged=True)

    def _publish(self, stamp: Time, probabilities: np.ndarray, elapsed: float, privileged: bool) -> None:
        message = SuccessScores(
            probabilities=[float(p) for p in probabilities], inference_time=elapsed, privileged=privileged
        )
        message.header.stamp = stamp
        self._scores_pub.publish(message)
        self.counters["published"] += 1

    def _publish_diagnostics(self) -> None:
        times = np.array(self._inference) if self._inference else np.array([math.nan])
        if self._last_stale:
            level, message = DiagnosticStatus.WARN, f"no scores: {self._last_stale}"
        elif self._classify is None and self._success is None and self._stage_success is None:
            level, message = DiagnosticStatus.WARN, "no sim/success or sim/stage_success yet"
        elif self._stage_success is not None and len(self._stage_success) < self.num_heads:
            level, message = DiagnosticStatus.ERROR, "sim/stage_success has fewer values than heads"
        else:
            level, message = DiagnosticStatus.OK, "scoring"
        values = {
            "backend": self.backend,
            "device": self.device,
            "heads": self.num_heads,
            "thresholds": self.thresholds,
            "inference_p50_ms": f"{np.percentile(times, 50) * 1e3:.2f}",
            "inference_p99_ms": f"{np.percentile(times, 99) * 1e3:.2f}",
            "stale_reason": self._last_stale,
            **self.counters,
        }
        publish_status(
            self,
            self._diag_pub,
            level=level,
            name="pld/reward",
            hardware_id=self.backend,
            message=message,
            values=values,
        )


def main() -> None:
    sys.exit(run_node(RewardClassifierNode))


if __name__ == "__main__":
    main()
