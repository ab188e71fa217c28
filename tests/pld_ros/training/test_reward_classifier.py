"""Training the reward classifier: the episode-wise split, threshold choice, real tiny training
runs (held-out precision, hard-negative mining), the ONNX export and its metadata."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pld_ros.training.reward_classifier import (
    OnnxRewardModel,
    choose_threshold,
    confusion,
    export_reward_model,
    frame_set,
    predict,
    split_episodes,
    train_reward_classifier,
)
from pld_ros.training.reward_dataset import LabelledEpisode
from tests.pld_ros.training.synthetic_frames import TINY, episode


@pytest.mark.parametrize(("count", "seed"), [(3, 0), (10, 1), (24, 2), (61, 3)])
def test_split_is_by_episode(count: int, seed: int) -> None:
    # Every third episode has no positive frame, as a failed rollout.
    episodes = [episode(i, positives=0 if i % 3 == 0 else 4) for i in range(count)]
    config = TINY.with_updates(seed=seed)
    split = split_episodes(episodes, config)
    parts = [split.train, split.reserve, split.val, split.test]
    assert sorted(sum(parts, ())) == sorted(e.episode_id for e in episodes)  # each exactly once
    assert split.train and split.val and split.test
    frames = frame_set(episodes)
    owner = np.array(frames.episode_ids)[frames.episode]
    for part in parts:
        indices = frames.frames_of(part)
        # Every frame of the part's episodes, and no frame of another episode.
        assert set(owner[indices]) == set(part)
        assert len(indices) == sum(len(e) for e in episodes if e.episode_id in part)
    if count >= 24:
        # Both kinds of episodes in the held-out splits, in about their proportion.
        failed = {e.episode_id for e in episodes if not (e.labels == 1).any()}
        for part in (split.val, split.test):
            assert 0 < len(failed & set(part)) < len(part)
    assert split_episodes(episodes, config) == split  # reproducible from the seed


def test_too_few_episodes_to_split() -> None:
    with pytest.raises(ValueError, match="too few"):
        split_episodes([episode(0), episode(1)], TINY)


def midway(low: float, high: float) -> float:
    """The point halfway between two probabilities in logit space."""
    logit = np.log(np.array([low, high])) - np.log1p(-np.array([low, high]))
    return float(1.0 / (1.0 + np.exp(-logit.mean())))


def test_threshold_is_the_lowest_meeting_the_target_at_and_above() -> None:
    probabilities = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95], dtype=np.float32)
    labels = np.array([0, 0, 1, 0, 1, 1, 0, 1, 1, 1], dtype=np.int8)
    # Precision of the frames above each candidate, 0.1 to 0.9:
    #   6/9, 6/8 = 0.75, 5/7 = 0.71, 5/6 = 0.83, 4/5 = 0.8, 3/4 = 0.75, 3/3, 2/2, 1/1.
    # 1.0 holds from 0.7 up (not at 0.4-0.6: the negative at 0.7 is above them); every threshold
    # in [0.7, 0.8) calls the same frames, and the answer lies midway.
    assert choose_threshold(probabilities, labels, 1.0) == pytest.approx(midway(0.7, 0.8))
    # 0.75 is met at 0.2 already, but not at 0.3 above it: the answer is in [0.4, 0.5).
    assert choose_threshold(probabilities, labels, 0.75) == pytest.approx(midway(0.4, 0.5))
    unlabelled = labels.copy()
    unlabelled[6] = -1  # the negative at 0.7 unlabelled: it no longer counts
    assert choose_threshold(probabilities, unlabelled, 1.0) == pytest.approx(midway(0.4, 0.5))
    # The only positive is the lowest frame: the target is met only above the highest, calling
    # nothing (recall 0).
    only_lowest = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=np.int8)
    assert choose_threshold(probabilities, only_lowest, 0.99) == pytest.approx(0.95)
    with pytest.raises(ValueError, match="no positive"):
        choose_threshold(probabilities, np.zeros(10, np.int8), 0.99)


def test_confusion_counts_above_the_threshold_and_skips_unlabelled() -> None:
    probabilities = np.array([0.9, 0.5, 0.2, 0.8, 0.5, 0.1, 0.99], dtype=np.float32)
    labels = np.array([1, 1, 1, 0, 0, 0, -1], dtype=np.int8)
    result = confusion(probabilities, labels, 0.5)  # 0.5 itself is not above 0.5
    assert (result.true_positives, result.false_positives, result.false_negatives, result.true_negatives) == (
        1,
        1,
        2,
        2,
    )
    assert result.precision == 0.5 and result.recall == pytest.approx(1 / 3)
    nothing = confusion(probabilities, labels, 0.995)
    assert np.isnan(nothing.precision) and nothing.recall == 0.0 and nothing.meets(0.99)


def test_tiny_training_reaches_the_precision_target_on_held_out_episodes(tmp_path: Path) -> None:
    episodes = [episode(i) for i in range(24)]
    result = train_reward_classifier(episodes, TINY, log=lambda _: None)
    # The first positive frame of each episode sits at a label change: left out of the rounds' scores.
    held_out, all_frames = result.rounds[-1].test[0], result.test_all_frames[0]
    assert held_out.true_positives + held_out.false_negatives == 3 * len(result.split.test)
    assert all_frames.true_positives + all_frames.false_negatives == 4 * len(result.split.test)
    assert held_out.precision >= TINY.precision_target and held_out.recall >= 0.8
    assert all_frames.precision >= TINY.precision_target

    out = export_reward_model(result, tmp_path / "reward.onnx")
    model = OnnxRewardModel(out)
    assert model.metadata is not None
    assert model.metadata.thresholds == result.thresholds and model.metadata.heads == ("lift",)
    assert model.metadata.held_out_episodes == result.split.test
    frames = frame_set(episodes)
    indices = frames.frames_of(result.split.test)
    np.testing.assert_allclose(
        model.probabilities(frames.views[indices]), predict(result.model, frames, indices), atol=1e-5
    )
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (images,) = session.get_inputs()
    assert (images.name, images.type, images.shape[1:]) == ("images", "tensor(uint8)", [2, 16, 16, 3])


def test_hard_negative_mining_adds_false_positives_and_keeps_held_out_precision() -> None:
    """Constructed case: hard negatives (red in the wrist view only) appear only in the reserve and
    test episodes, so the first model never saw one and calls them successes; the validation
    split has none either, so the threshold cannot hide them. Mining must find them in the
    reserve, add them, and the held-out precision must not drop (here it rises)."""
    config = TINY.with_updates(max_rounds=4)
    plain = [episode(i) for i in range(24)]
    split = split_episodes(plain, config)
    hard_ones = set(split.reserve + split.test)
    episodes = [episode(i, hard=4 if e.episode_id in hard_ones else 0) for i, e in enumerate(plain)]
    assert split_episodes(episodes, config) == split  # the hard negatives do not move the split
    result = train_reward_classifier(episodes, config, log=lambda _: None)
    first, last = result.rounds[0], result.rounds[-1]
    assert first.test[0].false_positives > 0 and first.pool_false_positives > 0
    assert len(result.rounds) >= 2
    mined = result.rounds[1]
    assert mined.mined == first.pool_false_positives
    assert mined.samples == first.samples + config.hard_negative_repeats * mined.mined
    assert last.test[0].precision >= first.test[0].precision
    assert last.test[0].false_positives < first.test[0].false_positives


def test_mining_without_rounds_stops_after_the_first_run() -> None:
    episodes = [episode(i, hard=2) for i in range(12)]
    result = train_reward_classifier(
        episodes, TINY.with_updates(max_rounds=0, epochs=1, precision_target=1.0), log=lambda _: None
    )
    assert [r.round for r in result.rounds] == [0]


def test_episodes_that_disagree_are_refused() -> None:
    other = LabelledEpisode(**{**episode(1).__dict__, "heads": ("grasp",)})
    with pytest.raises(ValueError, match="episode e001: heads"):
        train_reward_classifier([episode(0), other, episode(2)], TINY, log=lambda _: None)


def test_a_split_without_positives_is_refused() -> None:
    episodes = [episode(i, positives=0) for i in range(6)]
    with pytest.raises(ValueError, match="no positive frame"):
        train_reward_classifier(episodes, replace(TINY, epochs=1), log=lambda _: None)


SHIPPED = Path(__file__).resolve().parents[3] / "config" / "models" / "franka_pick_cube_reward.onnx"


def test_shipped_classifier_keeps_the_reward_contract() -> None:
    assert SHIPPED.is_file(), f"{SHIPPED} is missing: run scripts/train_sim_models.sh"
    assert SHIPPED.stat().st_size < 10e6
    session = ort.InferenceSession(str(SHIPPED), providers=["CPUExecutionProvider"])
    (images,) = session.get_inputs()
    assert (images.name, images.type, images.shape[1:]) == ("images", "tensor(uint8)", [2, 128, 128, 3])
    (output,) = session.get_outputs()
    assert output.name == "probabilities"
    (probabilities,) = session.run(["probabilities"], {"images": np.zeros((3, 2, 128, 128, 3), np.uint8)})
    assert probabilities.shape == (3, 1) and ((probabilities >= 0) & (probabilities <= 1)).all()
