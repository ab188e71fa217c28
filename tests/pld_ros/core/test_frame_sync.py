"""Matching wrist and side frames by capture time, and refusing to match a stale camera."""

from __future__ import annotations

import pytest

from pld_ros.core.frame_sync import FrameSync, NoSet, SyncedSet


def make(tolerance: float = 0.010, stale_after: float = 0.5, history: int = 8) -> FrameSync[str]:
    return FrameSync(["wrist", "side"], tolerance=tolerance, stale_after=stale_after, history=history)


def synced(result: SyncedSet[str] | NoSet) -> SyncedSet[str]:
    assert isinstance(result, SyncedSet), result
    return result


def test_the_newest_pair_within_tolerance_wins_over_the_newest_frames() -> None:
    sync = make()
    # Wrist at 30 Hz from t=0, side at 30 Hz shifted by 5 ms: all pairs are 5 ms apart.
    for i in range(5):
        sync.add("wrist", 100.0 + i / 30, f"w{i}")
        sync.add("side", 100.005 + i / 30, f"s{i}")
    sync.add("wrist", 100.0 + 5 / 30, "w5")  # side's frame 5 has not arrived yet
    result = synced(sync.newest(now=100.2))
    assert dict(result.items) == {"wrist": "w4", "side": "s4"}
    assert result.skew == pytest.approx(0.005)
    assert result.stamp == pytest.approx(100.0 + 4 / 30)
    sync.add("side", 100.005 + 5 / 30, "s5")
    assert dict(synced(sync.newest(now=100.2)).items) == {"wrist": "w5", "side": "s5"}


def test_each_camera_contributes_the_frame_closest_to_the_set() -> None:
    sync = make(tolerance=0.020)
    sync.add("wrist", 10.000, "w0")
    sync.add("side", 10.004, "s0")
    sync.add("side", 10.015, "s1")
    result = synced(sync.newest(now=10.1))
    # s1 would also be within 20 ms of w0, but s0 is closer: the smallest skew is kept.
    assert dict(result.items) == {"wrist": "w0", "side": "s0"} and result.skew == pytest.approx(0.004)


def test_frames_that_never_line_up_give_no_set_and_say_how_far_apart_they_are() -> None:
    sync = make(tolerance=0.010)
    sync.add("wrist", 5.000, "w")
    sync.add("side", 5.030, "s")
    result = sync.newest(now=5.05)
    assert isinstance(result, NoSet)
    assert result.stale == () and result.skew == pytest.approx(0.030)
    assert "within 10 ms" in result.reason


def test_a_stale_camera_blocks_every_set_until_it_delivers_again() -> None:
    sync = make(stale_after=0.2)
    for i in range(4):
        sync.add("wrist", 1.0 + i * 0.05, f"w{i}")
        sync.add("side", 1.0 + i * 0.05, f"s{i}")
    assert isinstance(sync.newest(now=1.2), SyncedSet)
    # Side stops; wrist goes on. A matching pair exists, but side's newest frame is too old.
    for i in range(4, 10):
        sync.add("wrist", 1.0 + i * 0.05, f"w{i}")
    result = sync.newest(now=1.0 + 9 * 0.05)
    assert isinstance(result, NoSet)
    assert result.stale == ("side",) and result.reason == "stale: side"
    assert result.skew == pytest.approx(6 * 0.05)
    sync.add("side", 1.0 + 9 * 0.05, "s9")
    assert dict(synced(sync.newest(now=1.0 + 9 * 0.05)).items) == {"wrist": "w9", "side": "s9"}


def test_a_camera_never_seen_is_stale_and_an_old_match_is_not_given() -> None:
    sync = make(stale_after=0.2)
    sync.add("wrist", 1.0, "w")
    assert sync.newest(now=1.0) == NoSet("stale: side", stale=("side",), skew=None)
    sync.add("side", 1.0, "s")
    assert isinstance(sync.newest(now=1.1), SyncedSet)
    # Both newest frames are fresh, but the only matching pair is older than stale_after.
    sync.add("wrist", 1.15, "w2")
    sync.add("side", 1.19, "s2")
    result = sync.newest(now=1.3)
    assert isinstance(result, NoSet) and result.stale == ()


def test_out_of_order_and_repeated_frames_are_dropped_and_history_is_bounded() -> None:
    sync = make(tolerance=0.001, history=2)
    assert sync.add("wrist", 2.0, "a")
    assert not sync.add("wrist", 2.0, "again")
    assert not sync.add("wrist", 1.9, "late")
    sync.add("side", 2.0, "s")
    sync.add("wrist", 2.1, "b")
    sync.add("wrist", 2.2, "c")  # pushes "a" out of a 2-frame history
    result = sync.newest(now=2.2)
    assert isinstance(result, NoSet) and result.skew == pytest.approx(0.2)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="distinct"):
        FrameSync(["wrist", "wrist"], tolerance=0.01, stale_after=0.5)
    with pytest.raises(ValueError, match="stale_after > 0"):
        FrameSync(["wrist"], tolerance=0.01, stale_after=0.0)
    with pytest.raises(KeyError):
        make().add("top", 1.0, "x")
