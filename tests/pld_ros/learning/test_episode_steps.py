from __future__ import annotations

import numpy as np
import pytest

from pld_ros.learning.episode_steps import EpisodeSteps


def steps(length: int = 3, terminal: bool = True) -> EpisodeSteps:
    reward = np.zeros(length, dtype=np.float32)
    reward[-1] = 1.0 if terminal else 0.0
    return EpisodeSteps(
        state=np.zeros((length + 1, 4), dtype=np.float32),
        base_action=np.zeros((length + 1, 7), dtype=np.float32),
        residual=np.zeros((length, 7), dtype=np.float32),
        reward=reward,
        terminal=terminal,
    )


def test_returns_are_discounted_to_go() -> None:
    episode = steps(3)
    np.testing.assert_allclose(episode.returns(0.9), [0.81, 0.9, 1.0], rtol=1e-6)
    assert episode.success and not steps(3, terminal=False).success


def test_shapes_must_agree_and_values_be_finite() -> None:
    good = steps(2)
    with pytest.raises(ValueError, match="state"):
        EpisodeSteps(good.state[:2], good.base_action, good.residual, good.reward, True)
    with pytest.raises(ValueError, match="at least one"):
        EpisodeSteps(good.state[:1], good.base_action[:1], good.residual[:0], good.reward[:0], True)
    bad = good.residual.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        EpisodeSteps(good.state, good.base_action, bad, good.reward, True)
    with pytest.raises(ValueError, match="images"):
        EpisodeSteps(
            good.state,
            good.base_action,
            good.residual,
            good.reward,
            True,
            images=np.zeros((2, 1, 4, 4, 3), np.uint8),
        )
