"""``pld dataset convert`` end to end through the typer app (no ROS): bags written as the recorder
writes them become LeRobot v3.0 and HDF5 datasets whose frames, actions, base/residual split,
episode boundaries, prompts and outcomes are the bags'; the dataset's rate is the recorded control
rate, given, or assumed for old bags, and says which; a broken bag is reported and the others
converted; a cut bag gives its readable part."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from pld_ros.core.episode import Outcome, RunMode
from pld_ros.data.dataset_commands import app
from pld_ros.data.hdf5_dataset import Hdf5Reader
from pld_ros.data.lerobot_dataset import LeRobotReader
from pld_ros.data.sft_episode import Origin
from tests.pld_ros.data.synthetic_bags import (
    CAMERAS,
    COMMAND,
    PROMPT,
    Run,
    newest_frame,
    pattern,
    record,
    tick_stamp,
)
from tests.pld_ros.data.test_bag_episodes import assert_episode

RUNS = (
    Run(1, ticks=12, probe_steps=3),
    Run(2, ticks=9, outcome=Outcome.FAILURE),
    Run(3, ticks=10, mode=RunMode.BASE_ONLY),
)


def convert(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["convert", *map(str, args)])
    return result.exit_code, result.output


def test_bags_become_hdf5_and_lerobot_datasets(tmp_path: Path) -> None:
    bags, recording = record(tmp_path / "bags", RUNS)
    code, output = convert(tmp_path / "bags", "--format", "hdf5", "--out", tmp_path / "all.hdf5")
    assert code == 0, output
    assert "3 episodes (31 frames) converted" in output and "0 not converted" in output
    assert "bag [####################] 3/3 rig-000003: 1 episode(s), 10 frames" in output
    with Hdf5Reader(tmp_path / "all.hdf5") as reader:
        episodes = list(reader)
    for episode, run in zip(episodes, RUNS, strict=True):
        assert_episode(episode, run, recording)  # lossless: frames, actions, split, boundaries, prompt
    assert [e.success for e in episodes] == [True, False, True]
    assert [e.info.origin for e in episodes] == [Origin.PLD, Origin.PLD, Origin.BASE]
    assert [e.info.extra["bag"] for e in episodes] == [bag.name for bag in bags]

    code, output = convert(*bags, "--out", tmp_path / "successes", "--filter", "success")
    assert code == 0, output
    assert "2 episodes (22 frames) converted" in output and "1 filtered out" in output
    reader_ = LeRobotReader(tmp_path / "successes")
    assert len(reader_) == 2 and set(reader_.tasks.values()) == {PROMPT}
    for index, run in enumerate((RUNS[0], RUNS[2])):
        assert_episode(reader_.episode(index), run, recording, video=True)


def test_the_rate_is_the_recorded_one_unless_given_and_says_which(tmp_path: Path) -> None:
    (bag,), recording = record(tmp_path / "now", RUNS[:1])
    code, output = convert(bag, "--format", "hdf5", "--out", tmp_path / "now.hdf5")
    assert code == 0, output
    assert f"pld dataset: 20 frames per second: the control rate recorded in {bag}\n" in output
    code, output = convert(bag, "--format", "hdf5", "--out", tmp_path / "given.hdf5", "--fps", "20")
    assert code == 0 and "pld dataset: 20 frames per second: --fps\n" in output, output
    # Bags of an older recorder: 20 Hz assumed, said once for the dataset and once per bag.
    (old,), _ = record(tmp_path / "old", RUNS[:1], control_rate=None)
    code, output = convert(old, "--format", "hdf5", "--out", tmp_path / "old.hdf5")
    assert code == 0, output
    assert f"20 frames per second: the default: {old} does not record its control rate" in output
    assert "pld dataset: warning: " in output and "20 Hz assumed" in output
    with Hdf5Reader(tmp_path / "old.hdf5") as reader:
        assert_episode(reader.episode(0), RUNS[0], recording)
    # A bag recorded at another rate than the first one's is not converted; the others are.
    (other,), _ = record(tmp_path / "other", RUNS[1:2], control_rate=10.0)
    code, output = convert(bag, other, "--format", "hdf5", "--out", tmp_path / "mixed.hdf5")
    assert code == 1 and "1 episodes (12 frames) converted" in output, output
    assert f"{other}: control rate 10 Hz (recorded), the dataset's is 20 Hz: convert it" in output
    (odd,), _ = record(tmp_path / "odd", RUNS[:1], control_rate=12.5)
    code, output = convert(odd, "--format", "hdf5", "--out", tmp_path / "odd.hdf5")
    assert code == 2 and "control rate 12.5 Hz; a dataset needs whole frames per second: give --fps" in output
    assert not (tmp_path / "odd.hdf5").exists()


def test_a_session_bag_with_a_prompt_and_fewer_cameras(tmp_path: Path) -> None:
    (bag,), recording = record(tmp_path, RUNS[:2], split="session")
    out = tmp_path / "session.hdf5"
    code, output = convert(bag, "--format", "hdf5", "--out", out, "--prompt", "stack", "--cameras", "side")
    assert code == 0, output
    with Hdf5Reader(out) as reader:
        episodes = list(reader)
    assert [len(e) for e in episodes] == [12, 9] and [e.task for e in episodes] == ["stack", "stack"]
    assert [list(e.cameras) for e in episodes] == [["side"], ["side"]]
    np.testing.assert_array_equal(
        episodes[1].cameras["side"][0],
        pattern("side", newest_frame("side", tick_stamp(recording.ticks[2][0])), CAMERAS["side"]),
    )


def test_a_bag_missing_its_commands_is_reported_and_the_others_converted(tmp_path: Path) -> None:
    good, recording = record(tmp_path / "good", RUNS[:1])
    broken, _ = record(tmp_path / "broken", RUNS[1:2], drop={COMMAND})
    code, output = convert(good[0], broken[0], "--format", "hdf5", "--out", tmp_path / "ds.hdf5")
    assert code == 1
    assert "1 episodes (12 frames) converted" in output and "1 not converted" in output
    assert f"#1 {broken[0]}: ValueError: {broken[0]}: missing topic(s) {COMMAND}" in output
    failed = "0 episode(s), 0 frames, then it failed (ValueError, reported below)"
    assert f"2/2 {broken[0].name}: {failed}" in output
    with Hdf5Reader(tmp_path / "ds.hdf5") as reader:
        assert len(reader) == 1
        assert_episode(reader.episode(0), RUNS[0], recording)


def test_a_cut_bag_converts_what_is_readable(tmp_path: Path) -> None:
    run = Run(4, ticks=16)
    (bag,), recording = record(tmp_path / "bags", [run], chunk_period=1e-9)
    mcap = bag / f"{bag.name}.mcap"
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size * 6 // 10])
    code, output = convert(bag, "--format", "hdf5", "--out", tmp_path / "cut.hdf5")
    assert code == 0, output
    assert "pld dataset: warning: " in output and "the file ends inside" in output
    assert "no ENDED event in the bag: outcome unknown" in output
    with Hdf5Reader(tmp_path / "cut.hdf5") as reader:
        episode = reader.episode(0)
    assert 4 <= len(episode) < run.ticks and not episode.success
    assert_episode(episode, run, recording, range(len(episode)))
    assert "the file ends inside" in episode.info.extra["problems"]  # the dataset keeps the report


def test_bad_paths_and_options_are_clear_errors(tmp_path: Path) -> None:
    code, output = convert(tmp_path / "nowhere", "--out", tmp_path / "ds")
    assert code == 2 and f"pld dataset: {tmp_path / 'nowhere'}: no such file or directory" in output
    (tmp_path / "empty").mkdir()
    code, output = convert(tmp_path / "empty", "--out", tmp_path / "ds")
    assert code == 2 and "not a bag, nor a directory of bags" in output
    code, output = convert(tmp_path / "empty", "--out", tmp_path / "ds", "--format", "rlds")
    assert code == 2 and "--format must be lerobot or hdf5, got 'rlds'" in output
    code, output = convert(tmp_path / "empty", "--out", tmp_path, "--format", "hdf5")
    assert code == 2 and "exists; refusing to overwrite it" in output
    assert "Traceback" not in output
