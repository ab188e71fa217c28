"""The frozen base policy: what every backend offers, and the one place that picks a backend.

Backends: an openpi policy server (pi0 / pi0.5) over its websocket protocol
(:mod:`~pld_ros.policies.openpi_client`), an ONNX model (:mod:`~pld_ros.policies.onnx_policy`)
and a TorchScript module (:mod:`~pld_ros.policies.torch_policy`). Whatever a backend answers is
checked by :func:`validate_chunk` before anyone executes it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from pld_ros.core.observation import ACTION_DIM, Float32Array, Observation
from pld_ros.profile import BasePolicy as BasePolicyConfig


class PolicyOutputError(ValueError):
    """A backend answered something that is not an ``H x 7`` chunk of finite numbers."""


class BasePolicy(Protocol):
    """A base policy backend. ``infer`` may block (a network round trip, a GPU forward pass)."""

    @property
    def name(self) -> str:
        """Backend and model, e.g. "openpi:ws://gpu-box:8000" or "onnx:base_policy.onnx"."""
        ...

    @property
    def connected(self) -> bool:
        """False while a remote backend has no connection; a local backend always is."""
        ...

    def infer(self, observation: Observation) -> Float32Array:
        """The ``H x 7`` float32 action chunk for ``observation``."""
        ...

    def reset(self) -> None:
        """Forget any state kept between calls (a new episode)."""
        ...

    def close(self) -> None:
        """Release the model or connection; the policy is not used afterwards."""
        ...


def validate_chunk(actions: object, horizon: int, source: str) -> Float32Array:
    """``actions`` as an ``horizon x 7`` float32 chunk, or a :class:`PolicyOutputError` saying why not.

    A single action (7,) is a chunk of one. Servers often predict more rows than are worth
    executing (pi0 predicts 50): a longer chunk is cut to ``horizon`` rows; a shorter one is an
    error, since the profile's scheduling counts on ``horizon`` rows.
    """
    try:
        array = np.asarray(actions, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise PolicyOutputError(f"{source}: actions are not numeric: {exc}") from None
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != ACTION_DIM:
        raise PolicyOutputError(
            f"{source}: expected an H x {ACTION_DIM} action chunk, got shape {array.shape}"
        )
    if array.shape[0] < horizon:
        raise PolicyOutputError(
            f"{source}: chunk has {array.shape[0]} rows, the profile's chunk_horizon is {horizon}"
        )
    array = array[:horizon]
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        raise PolicyOutputError(f"{source}: non-finite action {array[bad[0], bad[1]]} at row {bad[0]}")
    return np.ascontiguousarray(array)


class ValidatedPolicy:
    """A backend whose every answer goes through :func:`validate_chunk`."""

    def __init__(self, backend: BasePolicy, horizon: int) -> None:
        self.backend = backend
        self.horizon = horizon

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def connected(self) -> bool:
        return self.backend.connected

    def infer(self, observation: Observation) -> Float32Array:
        return validate_chunk(self.backend.infer(observation), self.horizon, self.backend.name)

    def reset(self) -> None:
        self.backend.reset()

    def close(self) -> None:
        self.backend.close()


def make_base_policy(config: BasePolicyConfig) -> BasePolicy:
    """The backend ``config`` names, its answers validated against ``config.chunk_horizon``.

    A local model that cannot be loaded raises (ValueError / OSError) here; an unreachable
    server does not: the openpi backend connects on its first call and keeps retrying.
    """
    backend: BasePolicy
    if config.backend == "openpi":
        from pld_ros.policies.openpi_client import OpenpiPolicy

        backend = OpenpiPolicy(config)
    elif config.backend == "onnx":
        from pld_ros.policies.onnx_policy import OnnxPolicy

        assert config.path is not None  # the profile requires it for this backend
        backend = OnnxPolicy(config.path, config.views)
    else:
        from pld_ros.policies.torch_policy import TorchPolicy

        assert config.path is not None
        backend = TorchPolicy(config.path, config.views)
    return ValidatedPolicy(backend, config.chunk_horizon)
