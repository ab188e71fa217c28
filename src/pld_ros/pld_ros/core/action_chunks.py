"""Action chunks of the base policy, and which action each control tick executes.

A chunk is ``H x 7`` actions predicted from the observation of control tick ``s`` (the node
counts ticks as arm states received): row ``i`` is meant for the command issued at tick
``s + i``. At tick ``t`` the action is *fresh* when some chunk has a row for it
(``0 <= t - s < H``):

- without ensembling, the newest chunk (largest ``s``) that covers ``t`` gives its row;
- with temporal ensembling, the rows of every chunk covering ``t`` are averaged with weights
  ``exp(-m * a)``, where ``a`` is the chunk's age in chunks among those covering ``t`` (0 for the
  newest, 1 for the one before, ...) and ``m`` is :attr:`ChunkConfig.ensemble_decay`. ``m > 0``
  trusts newer predictions more, ``m = 0`` is a plain average. ACT (Zhao et al., 2023) counts
  from the oldest prediction instead (``exp(-m * i)``, ``i = 0`` the oldest), so a negative ``m``
  here reproduces its preference for older predictions.

A tick no chunk covers gets a hold: zero delta and the gripper where the last executed action
left it (:func:`~pld_ros.core.observation.hold_action`), marked not fresh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pld_ros.core.observation import ACTION_DIM, GRIPPER, Float32Array, hold_action


@dataclass(frozen=True)
class Chunk:
    """``H x 7`` actions predicted from the observation of control tick ``step``."""

    actions: Float32Array
    """H x ACTION_DIM float32; row i is meant for tick ``step + i``."""
    step: int
    """Control tick of the observation the chunk was predicted from."""
    stamp: float
    """Capture time of that observation, s."""
    chunk_id: int
    """Counts chunks since the producer started."""
    inference_time: float = 0.0
    """Seconds spent computing the chunk, network included."""

    def __post_init__(self) -> None:
        if self.actions.ndim != 2 or self.actions.shape[1] != ACTION_DIM or self.actions.shape[0] < 1:
            raise ValueError(f"a chunk is H x {ACTION_DIM} with H >= 1, got shape {self.actions.shape}")

    @property
    def horizon(self) -> int:
        return int(self.actions.shape[0])

    def covers(self, tick: int) -> bool:
        return 0 <= tick - self.step < self.horizon


@dataclass(frozen=True)
class TickAction:
    """The action executed at one control tick, and where it came from."""

    action: Float32Array
    """ACTION_DIM float32."""
    fresh: bool
    """A chunk row was predicted for this tick; False: a hold."""
    age: float
    """Seconds from the used chunk's observation to the tick; NaN for a hold."""
    chunk_index: int
    """Row of the newest covering chunk used; 0 for a hold."""
    chunk_id: int
    """Id of the newest covering chunk; 0 for a hold."""
    chunks_averaged: int
    """Chunks whose rows went into the action; 0 for a hold."""


@dataclass(frozen=True)
class ChunkConfig:
    """How ticks pick their action from the chunks."""

    temporal_ensemble: bool = False
    """Average the rows of every chunk covering a tick instead of taking the newest chunk's."""
    ensemble_decay: float = 0.5
    """m in the ensemble weight exp(-m * age in chunks), newest chunk age 0 (our default: the
    previous chunk counts 0.61 of the newest). 0 is a plain average; negative favours older
    chunks as ACT does."""
    max_chunks: int = 64
    """Chunks kept at most; older ones are dropped even if they still cover future ticks."""


class ChunkBuffer:
    """The chunks of the running episode, and the action of each tick from them."""

    def __init__(self, config: ChunkConfig = ChunkConfig()) -> None:
        if not math.isfinite(config.ensemble_decay):
            raise ValueError(f"ensemble_decay must be finite, got {config.ensemble_decay}")
        if config.max_chunks < 1:
            raise ValueError(f"max_chunks must be at least 1, got {config.max_chunks}")
        self.config = config
        self._chunks: list[Chunk] = []
        self._last_gripper: float | None = None

    @property
    def newest(self) -> Chunk | None:
        """The chunk predicted from the latest observation, if any."""
        return self._chunks[-1] if self._chunks else None

    def __len__(self) -> int:
        return len(self._chunks)

    def add(self, chunk: Chunk) -> None:
        """Keep ``chunk``; chunks stay ordered by observation tick whatever order they arrive in."""
        self._chunks.append(chunk)
        self._chunks.sort(key=lambda c: (c.step, c.chunk_id))
        del self._chunks[: -self.config.max_chunks]

    def reset(self) -> None:
        """Forget every chunk and the last gripper target (a new episode)."""
        self._chunks.clear()
        self._last_gripper = None

    def action_for(self, tick: int, tick_stamp: float, gripper: float) -> TickAction:
        """The action of control tick ``tick`` taken at ``tick_stamp`` (s).

        ``gripper`` is the measured closure, used by a hold when no action was executed yet.
        """
        # Chunks that end before this tick can cover no later tick either.
        self._chunks = [c for c in self._chunks if c.step + c.horizon > tick]
        covering = [c for c in self._chunks if c.covers(tick)]
        if not covering:
            return self.hold(gripper)
        newest = covering[-1]
        if self.config.temporal_ensemble and len(covering) > 1:
            ages = np.arange(len(covering) - 1, -1, -1, dtype=np.float64)
            weights = np.exp(-self.config.ensemble_decay * ages)
            rows = np.stack([c.actions[tick - c.step] for c in covering]).astype(np.float64)
            action = (weights @ rows / weights.sum()).astype(np.float32)
            averaged = len(covering)
        else:
            action = newest.actions[tick - newest.step].astype(np.float32, copy=True)
            averaged = 1
        self._last_gripper = float(action[GRIPPER])
        return TickAction(
            action=action,
            fresh=True,
            age=tick_stamp - newest.stamp,
            chunk_index=tick - newest.step,
            chunk_id=newest.chunk_id,
            chunks_averaged=averaged,
        )

    def hold(self, gripper: float) -> TickAction:
        """A hold: zero delta, the gripper at the last executed target (else at ``gripper``)."""
        target = self._last_gripper if self._last_gripper is not None else gripper
        return TickAction(
            action=hold_action(target),
            fresh=False,
            age=math.nan,
            chunk_index=0,
            chunk_id=0,
            chunks_averaged=0,
        )
