"""One control tick of the residual policy, without ROS: which action runs, and who produced it.

Per tick, in this order:

1. A human step received within ``teleop.hold_time`` wins (source HUMAN), in every phase.
2. A base action that is a hold (``fresh`` false: the chunk is exhausted) is forwarded as it is
   (source BASE): a residual on top of a hold would move an arm the base policy meant to keep still.
3. BASE_ONLY, and PROBE_TAKEOVER while ``step < k``: the base action (source BASE). The residual is
   not computed, which saves its inference time.
4. PROBE_TAKEOVER from ``step == k`` on, and RESIDUAL_ONLY from the first step: the executed action
   is ``base + xi * residual_scale * r`` (source COMBINED), ``r`` in ``[-1, 1]`` from the actor.
   PROBE_TAKEOVER samples ``r`` (PLD collects its data with the stochastic policy); RESIDUAL_ONLY
   evaluates the specialist, so it takes the deterministic ``tanh(mean)``.

xi follows the profile's :class:`~pld_ros.profile.XiSchedule`: linear from ``start`` to ``end`` over
``ramp_updates`` learner updates, read from the ``updates`` the weights were saved with (0 for a
fresh actor or a file without it), so every robot running one version uses the same xi.

The actor's network runs through a :class:`ResidualRunner`: :class:`OnnxRunner` (the actor exported
to ONNX in memory and run by onnxruntime; about 1.5x faster than torch eager on the CPU, see
``bench/policy_latency.py``) or :class:`TorchRunner`. Either gives the Gaussian's mean and log std;
the controller squashes (and samples) in numpy, so both backends sample the same distribution.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from pld_ros.core.episode import RunMode, Source
from pld_ros.core.observation import ACTION_DIM, GRIPPER, PROPRIO_DIM, Float32Array, Observation
from pld_ros.models.residual_actor import ResidualActor, ResidualActorConfig
from pld_ros.policies.onnx_runtime import inference_session
from pld_ros.profile import Profile, XiSchedule


def actor_config(profile: Profile) -> ResidualActorConfig:
    """The residual actor a profile describes, for the node that runs it and the trainer that
    trains it: one input per base-policy view, and a residual of 1 is the control arm's largest
    step per tick (see :mod:`pld_ros.models.residual_actor`)."""
    if profile.policies is None:
        raise ValueError(f"profile {profile.name!r} has no policies section")
    residual = profile.policies.residual
    safety = profile.arms[profile.control_arm].safety
    translation, rotation = safety.max_translation_step, safety.max_rotation_step
    return ResidualActorConfig(
        num_views=len(profile.policies.base.views),
        hidden_dim=residual.hidden_dim,
        num_layers=residual.num_layers,
        residual_scale=(translation,) * 3 + (rotation,) * 3 + (1.0,),
    )


def xi_at(schedule: XiSchedule, updates: int) -> float:
    """xi after ``updates`` learner updates: linear from start to end over ramp_updates, then end."""
    if schedule.ramp_updates == 0:
        return schedule.start
    fraction = min(max(updates, 0) / schedule.ramp_updates, 1.0)
    return schedule.start + fraction * (schedule.end - schedule.start)


class ResidualRunner(Protocol):
    """Runs an actor's network on one observation: the pre-tanh Gaussian's mean and log std (7 each)."""

    def distribution(
        self, images: np.ndarray, proprio: Float32Array, base: Float32Array
    ) -> tuple[Float32Array, Float32Array]: ...


class TorchRunner:
    """The actor in torch (``inference_mode``)."""

    def __init__(self, actor: ResidualActor) -> None:
        self.actor = actor.eval()

    def distribution(
        self, images: np.ndarray, proprio: Float32Array, base: Float32Array
    ) -> tuple[Float32Array, Float32Array]:
        with torch.inference_mode():
            mean, log_std = self.actor(
                torch.from_numpy(images)[None], torch.from_numpy(proprio)[None], torch.from_numpy(base)[None]
            )
        return mean[0].numpy(), log_std[0].numpy()


class OnnxRunner:
    """The actor exported to ONNX in memory and run by onnxruntime on the CPU.

    ``images_shape`` is one observation's ``(V, H, W, 3)``. ``threads``: onnxruntime's intra-op
    threads (1: one core, leaving the others to the classifier and the rest of the graph on a small
    robot computer).
    """

    def __init__(self, actor: ResidualActor, images_shape: tuple[int, ...], threads: int = 1) -> None:

        buffer = io.BytesIO()
        example = (
            torch.zeros((1, *images_shape), dtype=torch.uint8),
            torch.zeros(1, PROPRIO_DIM),
            torch.zeros(1, ACTION_DIM),
        )
        torch.onnx.export(
            actor.eval(),
            example,
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
            input_names=["images", "proprio", "base_action"],
            output_names=["mean", "log_std"],
            dynamo=False,
        )
        self.session = inference_session(
            buffer.getvalue(), threads=threads, providers=["CPUExecutionProvider"]
        )

    def distribution(
        self, images: np.ndarray, proprio: Float32Array, base: Float32Array
    ) -> tuple[Float32Array, Float32Array]:
        mean, log_std = self.session.run(
            None, {"images": images[None], "proprio": proprio[None], "base_action": base[None]}
        )
        return np.asarray(mean[0], np.float32), np.asarray(log_std[0], np.float32)


@dataclass(frozen=True)
class ActorWeights:
    """An actor ready to run: its runner, its per-dimension residual scale (the actor config's
    ``residual_scale``), and the learner updates its weights come from (for xi)."""

    runner: ResidualRunner
    residual_scale: tuple[float, ...]
    updates: int


@dataclass(frozen=True)
class HumanStep:
    """The newest human command and when it arrived (seconds, the controller's clock)."""

    action: Float32Array
    received: float


@dataclass(frozen=True)
class TickResult:
    action: Float32Array
    """The action to execute (7)."""
    source: Source
    residual: Float32Array | None
    """The actor's raw residual in [-1, 1] (7), or None when it was not computed."""
    xi: float
    """xi of this tick's weights (also when the residual was not used)."""
    observation_missing: bool = False
    """The residual was due but there was no observation (a stale camera): the base action ran."""


class ResidualController:
    """Decides each tick's action (see the module docstring)."""

    def __init__(
        self, views: Sequence[str], xi: XiSchedule, hold_time: float, rng: np.random.Generator | None = None
    ) -> None:
        self.views = tuple(views)
        self.xi = xi
        self.hold_time = hold_time
        self.rng = rng or np.random.default_rng()

    def tick(
        self,
        *,
        mode: RunMode,
        probe_steps: int,
        step: int,
        base: Float32Array,
        base_fresh: bool,
        weights: ActorWeights,
        observation: Observation | None,
        human: HumanStep | None,
        now: float,
    ) -> TickResult:
        if base.shape != (ACTION_DIM,):
            raise ValueError(f"a base action has {ACTION_DIM} values, got shape {base.shape}")
        xi = xi_at(self.xi, weights.updates)
        if human is not None and now - human.received <= self.hold_time:
            return TickResult(human.action, Source.HUMAN, None, xi)
        residual_due = mode is RunMode.RESIDUAL_ONLY or (
            mode is RunMode.PROBE_TAKEOVER and step >= probe_steps
        )
        if not base_fresh or not residual_due:
            return TickResult(base, Source.BASE, None, xi)
        if observation is None:
            return TickResult(base, Source.BASE, None, xi, observation_missing=True)
        mean, log_std = weights.runner.distribution(
            observation.stacked_views(self.views), observation.proprio, base
        )
        if mode is not RunMode.RESIDUAL_ONLY:
            mean = mean + np.exp(log_std) * self.rng.standard_normal(ACTION_DIM).astype(np.float32)
        residual = np.tanh(mean).astype(np.float32)
        scale = np.asarray(weights.residual_scale, dtype=np.float32)
        action = (base + xi * scale * residual).astype(np.float32)
        action[GRIPPER] = np.clip(action[GRIPPER], 0.0, 1.0)
        return TickResult(action, Source.COMBINED, residual, xi)
