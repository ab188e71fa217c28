"""The labelled-frames dataset on disk: round trip, crash safety and clear errors for bad files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pld_ros.core.observation import ACTION_DIM, PROPRIO_DIM
from pld_ros.training.reward_dataset import (
    NEGATIVE,
    POSITIVE,
    UNLABELLED,
    LabelledEpisode,
    guard_boundaries,
    labelled_files,
    labelled_rollout,
    load_labelled_dataset,
    load_labelled_episode,
    save_labelled_episode,
)
from pld_ros.training.rollouts import Episode
from tests.pld_ros.training.synthetic_frames import episode


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    original = LabelledEpisode(**{**episode(3).__dict__, "info": {"bag": "/data/run.mcap", "seed": 3}})
    path = save_labelled_episode(original, tmp_path)
    assert path == tmp_path / "e003.npz" and labelled_files(tmp_path) == [path]
    loaded = load_labelled_episode(path)
    assert (loaded.episode_id, loaded.source, loaded.view_names, loaded.heads) == (
        "e003",
        "test:synthetic",
        ("wrist", "side"),
        ("lift",),
    )
    np.testing.assert_array_equal(loaded.views, original.views)
    np.testing.assert_array_equal(loaded.labels, original.labels)
    np.testing.assert_array_equal(loaded.stamps, original.stamps)
    assert loaded.info == {"bag": "/data/run.mcap", "seed": 3}


def test_a_rollout_is_labelled_by_the_privileged_signal_on_the_final_head() -> None:
    steps = 5
    rollout = Episode(
        views=np.zeros((steps, 2, 4, 4, 3), dtype=np.uint8),
        proprio=np.zeros((steps, PROPRIO_DIM), dtype=np.float32),
        actions=np.zeros((steps, ACTION_DIM), dtype=np.float32),
        success=np.array([False, False, True, False, True]),
        view_names=("wrist", "side"),
        seed=7,
        succeeded=False,
    )
    labelled = labelled_rollout(rollout, "expert-000007", ("grasp", "lift"), 1, 0.05, {"policy": "expert"})
    assert labelled.labels[:, 0].tolist() == [UNLABELLED] * steps
    assert labelled.labels[:, 1].tolist() == [NEGATIVE, NEGATIVE, POSITIVE, NEGATIVE, POSITIVE]
    np.testing.assert_allclose(labelled.stamps, [0.0, 0.05, 0.1, 0.15, 0.2])
    assert labelled.info == {"seed": 7, "succeeded": False, "fault": "", "policy": "expert"}


def _resave(path: Path, **changes: object) -> None:
    """Write ``path`` again with some arrays replaced (None: left out)."""
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    for name, value in changes.items():
        if value is None:
            del arrays[name]
        else:
            arrays[name] = np.asarray(value)
    np.savez(path, **arrays)


def _meta(path: Path, **changes: object) -> str:
    """The file's ``meta`` JSON with some keys changed."""
    with np.load(path) as data:
        meta: dict[str, object] = json.loads(str(data["meta"]))
    meta.update(changes)
    return json.dumps(meta)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "not a labelled-frames file"),
        (lambda p: p.write_text("hello"), "not a labelled-frames file"),
        (lambda p: _resave(p, labels=None), "missing array.*labels"),
        (lambda p: _resave(p, labels=np.zeros((12, 2), np.int8)), r"labels: expected int8 \(12, 1\)"),
        (lambda p: _resave(p, labels=np.full((12, 1), 3, np.int8)), "labels: values must be"),
        (lambda p: _resave(p, stamps=np.zeros(11)), r"stamps: expected float64 \(12,\)"),
        (lambda p: _resave(p, views=np.zeros((12, 2, 16, 16), np.uint8)), "views: expected uint8"),
        (lambda p: _resave(p, meta="{"), "meta: not JSON"),
        (lambda p: _resave(p, meta=_meta(p, format=2)), "meta.format: 2"),
        (lambda p: _resave(p, meta=_meta(p, heads="lift")), "meta.heads: expected a list"),
        (lambda p: _resave(p, meta=_meta(p, episode_id="e999")), "does not match the file name"),
    ],
)
def test_a_malformed_file_is_refused_naming_file_and_field(
    tmp_path: Path, damage: Callable[[Path], object], message: str
) -> None:
    path = save_labelled_episode(episode(0), tmp_path)
    damage(path)
    with pytest.raises(ValueError, match=message) as error:
        load_labelled_dataset([tmp_path])
    assert str(path) in str(error.value)


def test_damaged_bytes_are_reported(tmp_path: Path) -> None:
    path = save_labelled_episode(episode(0), tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the compressed views: zlib or zip's CRC-32 notices
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a labelled-frames file") as error:
        load_labelled_episode(path)
    assert str(path) in str(error.value)


def test_datasets_must_agree_and_ids_be_unique(tmp_path: Path) -> None:
    save_labelled_episode(episode(0), tmp_path / "a")
    save_labelled_episode(episode(0), tmp_path / "b")
    with pytest.raises(ValueError, match="episode id 'e000' is also"):
        load_labelled_dataset([tmp_path / "a", tmp_path / "b"])
    other_views = LabelledEpisode(**{**episode(1).__dict__, "view_names": ("side", "wrist")})
    save_labelled_episode(other_views, tmp_path / "c")
    with pytest.raises(ValueError, match="views"):
        load_labelled_dataset([tmp_path / "a", tmp_path / "c"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no labelled episodes"):
        load_labelled_dataset([tmp_path / "empty"])
    with pytest.raises(ValueError, match="not a directory"):
        load_labelled_dataset([tmp_path / "missing"])


def test_temporaries_of_a_killed_writer_are_not_episodes(tmp_path: Path) -> None:
    save_labelled_episode(episode(0), tmp_path)
    (tmp_path / ".e001.npz.abc.tmp").write_bytes(b"half")
    assert [e.episode_id for e in load_labelled_dataset([tmp_path])] == ["e000"]


def test_guard_leaves_out_the_frames_at_each_label_change() -> None:
    n, p, u = NEGATIVE, POSITIVE, UNLABELLED
    labels = np.array([[n, p, n, n, n, p, p, n, n], [u, u, n, n, n, n, u, p, p]], dtype=np.int8).T
    one = guard_boundaries(labels, 1)
    assert one[:, 0].tolist() == [u, u, u, n, u, u, u, u, n]
    # A change across an unlabelled frame is not a change between neighbours: nothing to guard.
    assert one[:, 1].tolist() == labels[:, 1].tolist()
    assert guard_boundaries(labels, 2)[:, 0].tolist() == [u, u, u, u, u, u, u, u, u]
    np.testing.assert_array_equal(guard_boundaries(labels, 0), labels)
    assert labels[0, 0] == n  # the input is left as it was
