from __future__ import annotations

import pytest

from pld_ros.core.liveness import Liveness


def test_expected_source_is_never_seen_until_it_beats() -> None:
    live = Liveness(stale_after=1.0, expected=["/a"])
    [(name, state)] = live.states(now=5.0)
    assert name == "/a" and not state.alive and state.describe() == "never seen"
    assert live.beat("/a", now=5.0)
    assert live.states(now=5.5)[0][1].alive


def test_stale_is_reported_once_and_revival_is_noticed() -> None:
    live = Liveness(stale_after=1.0)
    assert live.beat("/a", now=0.0)
    assert not live.beat("/a", now=0.5)
    assert live.newly_stale(now=1.2) == []
    assert live.newly_stale(now=1.6) == ["/a"]
    assert live.newly_stale(now=2.0) == []
    assert live.states(now=2.0)[0][1].describe() == "stale for 1.5 s"
    assert live.beat("/a", now=2.1)
    assert live.newly_stale(now=3.5) == ["/a"]


def test_stale_after_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Liveness(stale_after=0.0)
