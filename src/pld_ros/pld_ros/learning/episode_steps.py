"""One episode's learning data: what the replay buffers hold and the learner trains on.

The residual MDP of PLD: the state is the observation together with the base policy's action for
it, the action is the residual. An episode of ``T`` learning steps therefore has ``T + 1``
observations (the last one is the one the final step led to, needed for the bootstrap) and ``T``
residuals and rewards. Probing steps (the base policy alone before the takeover) are not learning
steps: an episode's learning data starts at the takeover, and a warm-up episode (base policy alone
throughout) contributes all its steps with a residual of zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EpisodeSteps:
    """``T`` learning steps of one episode (``T >= 1``)."""

    state: Float32Array
    """``[T + 1, S]`` low-dimensional observation (the arm's proprioception, or a simulator's
    state vector)."""
    base_action: Float32Array
    """``[T + 1, A]`` the base policy's action for each observation (the last one for the
    bootstrap)."""
    residual: Float32Array
    """``[T, A]`` the residual in normalized units ``[-1, 1]`` that was executed (zero when the
    base policy acted alone)."""
    reward: Float32Array
    """``[T]`` reward received after each step."""
    terminal: bool
    """The last step ended in a terminal state (success): no bootstrap after it. False for an
    episode cut by a step limit, which bootstraps from its last observation."""
    images: npt.NDArray[np.uint8] | None = None
    """``[T + 1, V, H, W, 3]`` policy views, or None for state-only learning."""

    def __post_init__(self) -> None:
        steps = len(self.residual)
        if steps < 1:
            raise ValueError("an episode needs at least one learning step")
        expected: dict[str, tuple[npt.NDArray[np.generic], int, int]] = {
            "state": (self.state, steps + 1, 2),
            "base_action": (self.base_action, steps + 1, 2),
            "residual": (self.residual, steps, 2),
            "reward": (self.reward, steps, 1),
        }
        if self.images is not None:
            expected["images"] = (self.images, steps + 1, 5)
        for name, (array, length, ndim) in expected.items():
            if array.ndim != ndim or len(array) != length:
                raise ValueError(
                    f"{name}: expected {ndim}-D with {length} rows for {steps} steps, got {array.shape}"
                )
        if self.base_action.shape[1] != self.residual.shape[1]:
            raise ValueError(
                f"base_action has {self.base_action.shape[1]} dims, residual {self.residual.shape[1]}"
            )
        for name in ("state", "base_action", "residual", "reward"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"{name} holds NaN or infinite values")

    def __len__(self) -> int:
        return len(self.residual)

    @property
    def success(self) -> bool:
        return self.terminal and bool(self.reward[-1] > 0.0)

    def returns(self, discount: float) -> Float32Array:
        """``[T]`` discounted return-to-go from each step to the end of the episode (Cal-QL's
        Monte-Carlo reference; an episode cut by a step limit counts nothing beyond its end)."""
        out = np.empty(len(self), dtype=np.float32)
        running = 0.0
        for index in range(len(self) - 1, -1, -1):
            running = float(self.reward[index]) + discount * running
            out[index] = running
        return out
