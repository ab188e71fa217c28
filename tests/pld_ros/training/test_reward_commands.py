"""``pld reward collect | train | eval`` end to end: the simulated world, real files, the ONNX model;
errors say ``pld reward``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from pld_ros.sim.franka_pick_cube import CUBE_HALF_SIZE, LIFT_THRESHOLD
from pld_ros.training.reward_classifier import export_reward_model, train_reward_classifier
from pld_ros.training.reward_commands import NEAR_MISS_HEIGHTS, app, near_miss_lift_height
from pld_ros.training.reward_dataset import (
    POSITIVE,
    load_labelled_dataset,
    load_labelled_episode,
    save_labelled_episode,
)
from tests.pld_ros.training.synthetic_frames import TINY, episode

HOST = "127.0.0.61"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("data")
    for index in range(24):
        save_labelled_episode(episode(index, hard=1), directory)
    return directory


@pytest.fixture(scope="module")
def model(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = train_reward_classifier(load_labelled_dataset([dataset]), TINY, log=lambda _: None)
    return export_reward_model(result, tmp_path_factory.mktemp("model") / "reward.onnx")


def matrix(output: str) -> tuple[int, int, int, int]:
    """TP, FN, FP, TN from the printed confusion matrix."""
    positive = re.search(r"label positive\s+(\d+)\s+(\d+)", output)
    negative = re.search(r"label negative\s+(\d+)\s+(\d+)", output)
    assert positive and negative, output
    return int(positive[1]), int(positive[2]), int(negative[1]), int(negative[2])


def test_eval_confusion_matrix_matches_a_hand_count(model: Path, dataset: Path, tmp_path: Path) -> None:
    plot = tmp_path / "sweep.png"
    code, out, err = run("eval", str(model), str(dataset), "--plot", str(plot))
    assert code == 0, err
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    threshold = float(session.get_modelmeta().custom_metadata_map["thresholds"].strip("[]"))
    counts = {"TP": 0, "FN": 0, "FP": 0, "TN": 0}
    guarded = dict.fromkeys(counts, 0)  # without the frame on each side of a label change
    for path in sorted(dataset.glob("*.npz")):
        labelled = load_labelled_episode(path)
        labels = labelled.labels[:, 0].tolist()
        for t, (views, label) in enumerate(zip(labelled.views, labels, strict=True)):
            (probability,) = session.run(["probabilities"], {"images": views[np.newaxis]})
            called = probability[0, 0] > threshold
            positive = label == POSITIVE
            outcome = ("T" if called == positive else "F") + ("P" if called else "N")
            counts[outcome] += 1
            if labels[max(t - 1, 0)] == label == labels[min(t + 1, len(labels) - 1)]:
                guarded[outcome] += 1
    assert matrix(out) == (counts["TP"], counts["FN"], counts["FP"], counts["TN"])
    line = next(line for line in out.splitlines() if "without 1 frame(s) at label changes" in line)
    assert f"(TP {guarded['TP']}, FP {guarded['FP']}, FN {guarded['FN']}, TN {guarded['TN']})" in line
    assert f"lift all frames at {threshold:.4f}: precision" in out
    rows = [line for line in out.splitlines() if re.match(r"\s+0\.\d{4}\s", line)]
    assert len(rows) >= 12 and sum("<- threshold" in row for row in rows) == 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_held_out_scores_the_test_split_alone(model: Path, dataset: Path) -> None:
    code, out, err = run("eval", str(model), str(dataset), "--held-out")
    assert code == 0, err
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    held_out = session.get_modelmeta().custom_metadata_map["held_out_episodes"]
    episodes = held_out.count('"') // 2
    assert f"{12 * episodes} frames of {episodes} episodes (the model's held-out episodes)" in out
    assert sum(matrix(out)) == 12 * episodes


def test_eval_of_a_model_without_a_threshold_asks_for_one(model: Path, dataset: Path, tmp_path: Path) -> None:
    plain = onnx.load(str(model))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    code, _, err = run("eval", str(tmp_path / "plain.onnx"), str(dataset))
    assert code == 2 and "has no threshold in its metadata: pass --threshold" in err


def test_train_writes_a_model_with_its_threshold(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "reward.onnx"
    code, text, err = run("train", str(dataset), "--out", str(out), "--epochs", "1", "--rounds", "0")
    assert code == 0, err
    assert "split by episode: training" in text and "lift held-out, all frames at" in text
    metadata = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta()
    props = metadata.custom_metadata_map
    assert props["views"] == '["wrist", "side"]' and props["heads"] == '["lift"]'
    assert 0.0 < float(props["thresholds"].strip("[]")) < 1.0 and props["precision_target"] == "0.99"


def test_a_malformed_dataset_file_is_a_clear_error(dataset: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in sorted(dataset.glob("*.npz"))[:4]:
        (broken / path.name).write_bytes(path.read_bytes())
    bad = broken / "e002.npz"
    bad.write_bytes(bad.read_bytes()[:1000])
    code, _, err = run("train", str(broken), "--out", str(tmp_path / "x.onnx"))
    assert code == 2 and f"{bad}: not a labelled-frames file" in err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.sim_in_process
def test_collect_labels_simulated_frames_by_the_privileged_signal(tmp_path: Path) -> None:
    """One scripted-expert episode in the real simulated franka_pick_cube world (franky-sim)."""
    args = ("collect", "franka_pick_cube", "--episodes", "1", "--out", str(tmp_path), "--seed", "3")
    code, out, err = run(*args, "--host", HOST, "--success-ticks", "5")
    assert code == 0, err + out
    (labelled,) = load_labelled_dataset([tmp_path])
    assert labelled.episode_id == "expert-000003" and labelled.source == "sim:privileged"
    assert labelled.view_names == ("wrist", "side") and labelled.heads == ("lift",)
    assert labelled.views.shape[1:] == (2, 128, 128, 3)
    labels = labelled.labels[:, 0]
    # The expert lifts the cube and the episode ends after 5 ticks of success.
    assert labelled.info["succeeded"] and (labels[-5:] == POSITIVE).all() and labels[0] != POSITIVE
    assert f"{int((labels == POSITIVE).sum())} positive frames" in out
    # A second run finds the episode there and runs nothing.
    code, out, _ = run(*args, "--host", HOST)
    assert code == 0 and "1 episodes already in" in out


def test_near_miss_heights_fall_in_either_band_per_seed_and_leave_out_the_success_height() -> None:
    heights = [near_miss_lift_height(seed) for seed in range(200)]
    assert heights == [near_miss_lift_height(seed) for seed in range(200)]  # the seed decides
    (low_min, low_max), (high_min, high_max) = NEAR_MISS_HEIGHTS
    low = [h for h in heights if low_min <= h <= low_max]
    high = [h for h in heights if high_min <= h <= high_max]
    assert len(low) + len(high) == len(heights) and 70 <= len(low) <= 130
    # The TCP height at which the cube's centre is 4 cm up (the world's success) is in neither.
    success = CUBE_HALF_SIZE + LIFT_THRESHOLD
    assert low_max < success < high_min


def test_a_profile_without_the_simulated_world_is_a_pld_reward_error(tmp_path: Path) -> None:
    code, _, stderr = run("collect", "yam_gpu_insertion", "--episodes", "1", "--out", str(tmp_path))
    assert code == 2
    assert stderr == (
        "pld reward: yam_gpu_insertion: the simulated variant does not host the franka_pick_cube world\n"
    )
