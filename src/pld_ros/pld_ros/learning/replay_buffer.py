"""Replay buffers of whole episodes, and RLPD's symmetric sampling of one batch from two of them.

A :class:`ReplayBuffer` keeps the rows of each :class:`~pld_ros.learning.episode_steps.EpisodeSteps`
contiguously: an episode of ``T`` steps takes ``T + 1`` rows (its observations), and the transition
starting at row ``i`` leads to row ``i + 1``, so a next observation is never stored twice. The
capacity counts transitions; when a new episode would exceed it, whole episodes are evicted,
oldest first. Each transition also holds its Monte-Carlo return (Cal-QL's lower bound), computed
once when its episode is added.

With ``n_step`` > 1 a transition spans up to ``n`` steps of its episode (fewer at its end): the
reward is the discounted sum of those steps' rewards, the next observation the one ``k`` steps
later, ``steps`` holds ``k`` (the learner bootstraps with ``discount ** k``), and ``done`` is set
when the span ends in a terminal state. A sparse success reward then reaches the start of a
50-step episode in a tenth of the backups.

Rows live in flat arrays, so a batch is a handful of vectorized gathers. They are allocated at the
first episode (only then are the state size and image shape known) and grow as needed; evicted
episodes leave a gap at the front that is closed by moving the live rows down when the end of the
arrays is reached, with room to spare so that this happens rarely.

PLD (after RLPD) learns from two buffers: the offline one (successful base-policy episodes) and the
online one (everything collected with the residual); :func:`sample_symmetric` draws each batch
from both in a fixed proportion.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt
import torch

from pld_ros.learning.episode_steps import EpisodeSteps

GROWTH_HEADROOM = 0.25
"""Share of the row arrays kept free after a compaction (our choice): with it, moving the live
rows down happens at most once per quarter of the arrays appended, a bounded cost per row."""


@dataclass(frozen=True)
class TransitionBatch:
    """A batch of ``B`` transitions as torch tensors (float32 unless noted)."""

    state: torch.Tensor
    """``[B, S]``"""
    images: torch.Tensor | None
    """uint8 ``[B, V, H, W, 3]``, or None for state-only learning."""
    base_action: torch.Tensor
    """``[B, A]``"""
    residual: torch.Tensor
    """``[B, A]`` the executed residual."""
    reward: torch.Tensor
    """``[B]`` as received, or the discounted sum over the ``steps`` rewards of an n-step
    transition (the learner adds its reward bias)."""
    steps: torch.Tensor
    """``[B]`` environment steps the transition spans (1 unless n-step); the next observation is
    that many steps later and is discounted by ``discount ** steps``."""
    done: torch.Tensor
    """``[B]`` 1.0 where the transition ended in a terminal state (no bootstrap), else 0.0."""
    next_state: torch.Tensor
    """``[B, S]``"""
    next_images: torch.Tensor | None
    """uint8 ``[B, V, H, W, 3]`` or None."""
    next_base_action: torch.Tensor
    """``[B, A]`` the base action at the next observation (the on-the-fly backup keeps it fixed)."""
    mc_return: torch.Tensor
    """``[B]`` discounted return-to-go of the transition's episode from this step, of the rewards
    plus the buffer's reward bias (the learner's: Cal-QL compares it with biased Q values)."""

    def __len__(self) -> int:
        return len(self.reward)

    def to(self, device: torch.device | str) -> TransitionBatch:
        """This batch on ``device``."""
        moved: dict[str, torch.Tensor | None] = {
            f.name: None if (value := getattr(self, f.name)) is None else value.to(device)
            for f in fields(self)
        }
        return TransitionBatch(**moved)  # type: ignore[arg-type]  # the non-optional fields stay present


@dataclass(frozen=True)
class _Span:
    """Rows ``[start, start + length + 1)`` of one stored episode of ``length`` transitions."""

    start: int
    length: int


class ReplayBuffer:
    """Whole episodes, at most ``capacity`` transitions, oldest evicted first (module docstring).

    ``discount`` and ``reward_bias`` are the learner's (``Trainer.discount``, ``Trainer.reward_bias``):
    the Monte-Carlo returns are those of the rewards the critic learns, each plus the bias.
    ``n_step``: steps per sampled transition (``Trainer.n_step``; module docstring).
    """

    def __init__(self, capacity: int, discount: float, reward_bias: float = 0.0, n_step: int = 1) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        if n_step < 1:
            raise ValueError(f"n_step must be at least 1, got {n_step}")
        self.capacity = capacity
        self.discount = discount
        self.reward_bias = reward_bias
        self.n_step = n_step
        self._episodes: deque[_Span] = deque()
        self._transitions = 0
        self._end = 0
        """One past the last used row."""
        self._arrays: dict[str, np.ndarray] = {}
        self._starts: npt.NDArray[np.int64] | None = None
        """Rows where a stored transition starts; rebuilt lazily after a change."""

    def __len__(self) -> int:
        """Stored transitions."""
        return self._transitions

    @property
    def episodes(self) -> int:
        return len(self._episodes)

    @property
    def bytes_per_transition(self) -> int | None:
        """Memory one stored transition takes (None before the first episode fixes the shapes):
        times ``capacity``, what the buffer holds once full, headroom aside."""
        if not self._arrays:
            return None
        return sum(array.itemsize * int(np.prod(array.shape[1:])) for array in self._arrays.values())

    def add(self, episode: EpisodeSteps) -> None:
        """Store ``episode`` whole, evicting the oldest episodes beyond the capacity.

        ValueError if it is longer than the capacity or its shapes differ from the stored ones.
        """
        length = len(episode)
        if length > self.capacity:
            raise ValueError(f"an episode of {length} steps exceeds the capacity of {self.capacity}")
        rows = self._rows_of(episode)
        if self._arrays:
            for name, values in rows.items():
                stored = self._arrays[name]
                if values.shape[1:] != stored.shape[1:]:
                    raise ValueError(
                        f"{name}: shape {values.shape[1:]} differs from the stored {stored.shape[1:]}"
                    )
        while self._transitions + length > self.capacity:
            self._transitions -= self._episodes.popleft().length
        if not self._episodes:
            self._end = 0
        start = self._make_room(rows, length + 1)
        for name, values in rows.items():
            self._arrays[name][start : start + length + 1] = values
        self._episodes.append(_Span(start, length))
        self._transitions += length
        self._end = start + length + 1
        self._starts = None

    def _rows_of(self, episode: EpisodeSteps) -> dict[str, np.ndarray]:
        """The episode's values per row; the last row (the final observation) has no transition."""
        length = len(episode)
        action_dim = episode.residual.shape[1]
        residual = np.zeros((length + 1, action_dim), dtype=np.float32)
        residual[:length] = episode.residual
        reward = np.zeros(length + 1, dtype=np.float32)
        reward[:length] = episode.reward
        done = np.zeros(length + 1, dtype=np.float32)
        done[length - 1] = 1.0 if episode.terminal else 0.0
        mc_return = np.zeros(length + 1, dtype=np.float32)
        mc_return[:length] = episode.returns(self.discount) + self.reward_bias * discounted_steps(
            np.arange(length, 0, -1), self.discount
        )
        rows: dict[str, np.ndarray] = {
            # Steps to the episode's final observation: relative, so compaction keeps it valid.
            "remaining": np.arange(length, -1, -1, dtype=np.int64),
            "state": episode.state.astype(np.float32, copy=False),
            "base_action": episode.base_action.astype(np.float32, copy=False),
            "residual": residual,
            "reward": reward,
            "done": done,
            "mc_return": mc_return,
        }
        if episode.images is not None:
            rows["images"] = episode.images
        elif self._arrays.get("images") is not None:
            raise ValueError("images: the buffer holds images, this episode has none")
        if self._arrays and "images" in rows and "images" not in self._arrays:
            raise ValueError("images: the buffer holds state-only episodes, this one has images")
        return rows

    def _make_room(self, rows: dict[str, np.ndarray], needed: int) -> int:
        """The first row of ``needed`` free contiguous rows at the end, after compacting or growing."""
        size = len(self._arrays["state"]) if self._arrays else 0
        if self._end + needed <= size:
            return self._end
        first = self._episodes[0].start if self._episodes else self._end
        live = self._end - first
        if first > 0 and live:
            for array in self._arrays.values():
                array[:live] = array[first : self._end]
            self._episodes = deque(_Span(span.start - first, span.length) for span in self._episodes)
        self._end = live
        if live + needed > size * (1.0 - GROWTH_HEADROOM):
            new_size = max(2 * size, int((live + needed) / (1.0 - GROWTH_HEADROOM)) + 1)
            for name, values in rows.items():
                grown = np.zeros((new_size, *values.shape[1:]), dtype=values.dtype)
                if name in self._arrays:
                    grown[:live] = self._arrays[name][:live]
                self._arrays[name] = grown
        return self._end

    def _transition_starts(self) -> npt.NDArray[np.int64]:
        if self._starts is None:
            self._starts = np.concatenate(
                [np.arange(span.start, span.start + span.length) for span in self._episodes]
            ).astype(np.int64)
        return self._starts

    def sample_rows(self, count: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        """Row indices of ``count`` transitions drawn uniformly with replacement."""
        if not self._transitions:
            raise ValueError("cannot sample from an empty buffer")
        starts = self._transition_starts()
        return starts[rng.integers(0, len(starts), size=count)]

    def gather(self, rows: npt.NDArray[np.int64]) -> dict[str, np.ndarray | None]:
        """The transitions starting at ``rows`` as numpy arrays named like :class:`TransitionBatch`."""
        arrays = self._arrays
        images = arrays.get("images")
        steps = np.minimum(self.n_step, arrays["remaining"][rows])
        last = rows + steps - 1
        reward = arrays["reward"][rows]
        if self.n_step > 1:
            reward = reward.copy()
            for offset in range(1, self.n_step):
                within = offset < steps
                # Past the span the index is clamped to its last row and the term masked out.
                later = arrays["reward"][np.minimum(rows + offset, last)]
                reward += np.where(within, self.discount**offset * later, 0.0).astype(np.float32)
        following = last + 1
        return {
            "state": arrays["state"][rows],
            "images": None if images is None else images[rows],
            "base_action": arrays["base_action"][rows],
            "residual": arrays["residual"][rows],
            "reward": reward,
            "steps": steps.astype(np.float32),
            "done": arrays["done"][last],
            "next_state": arrays["state"][following],
            "next_images": None if images is None else images[following],
            "next_base_action": arrays["base_action"][following],
            "mc_return": arrays["mc_return"][rows],
        }

    def sample(self, batch_size: int, rng: np.random.Generator) -> TransitionBatch:
        """``batch_size`` transitions drawn uniformly with replacement."""
        return batch_of([self.gather(self.sample_rows(batch_size, rng))])


def discounted_steps(steps: npt.NDArray[np.int64], discount: float) -> npt.NDArray[np.float32]:
    """``sum_{k < n} discount^k`` for each ``n`` of ``steps``: the return of a reward of 1 per step."""
    if discount == 1.0:
        return steps.astype(np.float32)
    return ((1.0 - discount ** steps.astype(np.float64)) / (1.0 - discount)).astype(np.float32)


def batch_of(parts: list[dict[str, np.ndarray | None]]) -> TransitionBatch:
    """The gathered ``parts`` (from :meth:`ReplayBuffer.gather`) concatenated into one batch."""
    values: dict[str, torch.Tensor | None] = {}
    for f in fields(TransitionBatch):
        arrays = [part[f.name] for part in parts]
        present = [array for array in arrays if array is not None]
        if len(present) not in (0, len(arrays)):
            raise ValueError(f"{f.name}: some buffers hold it and some do not")
        values[f.name] = torch.from_numpy(np.concatenate(present)) if present else None
    return TransitionBatch(**values)  # type: ignore[arg-type]  # the non-optional fields are present


def symmetric_counts(batch_size: int, offline_fraction: float, offline: int, online: int) -> tuple[int, int]:
    """Transitions drawn from the offline and the online buffer for one batch: ``round(B * f)``
    offline and the rest online, or all from one buffer when the other is empty."""
    if not offline and not online:
        raise ValueError("both buffers are empty")
    if not online:
        return batch_size, 0
    if not offline:
        return 0, batch_size
    from_offline = round(batch_size * offline_fraction)
    return from_offline, batch_size - from_offline


def sample_symmetric(
    offline: ReplayBuffer,
    online: ReplayBuffer,
    batch_size: int,
    offline_fraction: float,
    rng: np.random.Generator,
) -> TransitionBatch:
    """RLPD's symmetric sampling: one batch, ``offline_fraction`` of it from ``offline`` and the
    rest from ``online`` (see :func:`symmetric_counts`); offline rows come first."""
    counts = symmetric_counts(batch_size, offline_fraction, len(offline), len(online))
    parts = [
        buffer.gather(buffer.sample_rows(count, rng))
        for buffer, count in zip((offline, online), counts, strict=True)
        if count
    ]
    return batch_of(parts)
