"""The reward model's metadata: written as ONNX metadata_props, read back, malformed values named."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest

from pld_ros.training.reward_metadata import RewardModelMetadata, read_reward_metadata

METADATA = RewardModelMetadata(
    views=("wrist", "side"),
    heads=("grasp", "lift"),
    thresholds=(0.42, 0.97),
    precision_target=0.995,
    boundary_ticks=1,
    held_out_episodes=("expert-000001",),
    training='{"rounds": []}',
)


def onnx_file(path: Path, props: dict[str, str]) -> Path:
    model = onnx.helper.make_model(onnx.helper.make_graph([], "reward", [], []))
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_metadata_round_trips_through_an_onnx_file(tmp_path: Path) -> None:
    assert read_reward_metadata(onnx_file(tmp_path / "m.onnx", METADATA.props())) == METADATA


def test_a_model_without_thresholds_has_no_metadata(tmp_path: Path) -> None:
    assert read_reward_metadata(onnx_file(tmp_path / "m.onnx", {"config": "{}"})) is None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("thresholds", "[0.5, 1.0]", r"thresholds \[0.5, 1.0\] are not all in \(0, 1\)"),
        ("thresholds", "[0.5]", "1 thresholds for 2 heads"),
        ("thresholds", "[0.5,", "metadata 'thresholds' is not JSON"),
        ("precision_target", '"high"', "malformed reward-model metadata"),
    ],
)
def test_malformed_metadata_is_named(tmp_path: Path, key: str, value: str, message: str) -> None:
    path = onnx_file(tmp_path / "m.onnx", {**METADATA.props(), key: value})
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: .*{message}"):
        read_reward_metadata(path)


def test_a_missing_key_is_named(tmp_path: Path) -> None:
    props = METADATA.props()
    del props["views"]
    with pytest.raises(ValueError, match="no 'views' in the model's metadata"):
        read_reward_metadata(onnx_file(tmp_path / "m.onnx", props))


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such model file"):
        read_reward_metadata(tmp_path / "absent.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"\xff" * 32)
    with pytest.raises(ValueError, match=r"bad\.onnx: not a readable ONNX model"):
        read_reward_metadata(tmp_path / "bad.onnx")
