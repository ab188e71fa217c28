"""Stage 3 fine-tuning on real files: frames read from LeRobot v3.0 and HDF5 datasets written by the
project's writers (mixed), chunks within episodes, a split by episode, statistics from the data,
checkpoints that resume exactly, and initialization from the embedded base policy's ONNX file
(weights read back from the graph) or from an earlier run's weights."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pld_ros.core.observation import ACTION_DIM, PROPRIO_DIM
from pld_ros.data.sft_episode import SftEpisode
from pld_ros.models.proprio import proprio_features
from pld_ros.models.resnet10 import ResNet10Config
from pld_ros.models.sft_policy import (
    BACKBONE_KEYS,
    AutoregressivePolicy,
    FlowMatchingConfig,
    FlowMatchingPolicy,
    Head,
    load_policy,
    make_policy,
    save_policy,
)
from pld_ros.training.sft import (
    BEST_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    SftTrainingConfig,
    apply_initial_weights,
    base_policy_weights,
    initial_weights,
    learning_rate,
    load_frames,
    policy_config,
    split_episodes,
    train_sft,
)
from pld_ros.training.sim_base_policy import BasePolicyConfig, SimBasePolicy, export_onnx
from tests.pld_ros.training.sft_data import SIZE, TINY_HEADS, VIEWS, episodes, write_hdf5, write_lerobot

SHIPPED = Path(__file__).resolve().parents[3] / "config" / "models" / "franka_pick_cube_base.onnx"
FAST = SftTrainingConfig(
    steps=6, batch_size=4, warmup_steps=2, val_every=3, checkpoint_every=3, log_every=1, threads=1
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[SftEpisode]]:
    """A LeRobot dataset (episodes 0-3, episode 1 failed) and an HDF5 file (episodes 4-6)."""
    root = tmp_path_factory.mktemp("sft")
    first, second = episodes(4, failed=(1,)), episodes(3, frames=8, first=4)
    return write_lerobot(root / "lerobot", first), write_hdf5(root / "demos.hdf5", second), first + second


def test_frames_of_mixed_datasets_are_the_successful_episodes_resized(
    data: tuple[Path, Path, list[SftEpisode]],
) -> None:
    lerobot, hdf5, originals = data
    logged: list[str] = []
    frames = load_frames([lerobot, hdf5], VIEWS, (SIZE, SIZE), log=logged.append)
    used = [e for e in originals if e.success]
    assert [(s.index, s.frames) for s in frames.sources] == [
        (0, 10),
        (2, 10),
        (3, 10),
        (0, 8),
        (1, 8),
        (2, 8),
    ]
    assert frames.views.shape == (len(frames), 2, SIZE, SIZE, 3) and frames.views.dtype == np.uint8
    np.testing.assert_array_equal(frames.proprio, np.concatenate([e.state for e in used]))
    np.testing.assert_array_equal(frames.actions, np.concatenate([e.action for e in used]))
    assert any(line.endswith("lerobot: 3 episodes, 30 frames, 1 failed left out") for line in logged)
    # HDF5 is lossless: its frames are exactly the area-resized originals, views in policy order.
    last = used[-1]
    for v, view in enumerate(VIEWS):
        expected = cv2.resize(last.cameras[view][3], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(frames.views[len(frames) - len(last) + 3, v], expected)
    # Video is lossy, but the right frame: closer to its own original than to its neighbour.
    first = used[0]
    decoded = frames.views[5, 0].astype(np.float64)
    own = cv2.resize(first.cameras["wrist"][5], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    other = cv2.resize(first.cameras["wrist"][6], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    assert np.abs(decoded - own).mean() < 0.5 * np.abs(decoded - other).mean()

    everything = load_frames([lerobot, hdf5], VIEWS, (SIZE, SIZE), include_failures=True, log=lambda _: None)
    assert len(everything.sources) == 7 and len(everything) == len(frames) + 10


def test_chunks_stay_within_their_episode(data: tuple[Path, Path, list[SftEpisode]]) -> None:
    _, hdf5, originals = data
    frames = load_frames([hdf5], VIEWS, (SIZE, SIZE), log=lambda _: None)
    first, second = originals[4], originals[5]
    chunks = frames.chunks(np.array([0, 6, 7, 8]), 3)
    np.testing.assert_array_equal(chunks[0], first.action[[0, 1, 2]])
    np.testing.assert_array_equal(chunks[1], first.action[[6, 7, 7]])  # the last action repeated
    np.testing.assert_array_equal(chunks[2], first.action[[7, 7, 7]])
    np.testing.assert_array_equal(chunks[3], second.action[[0, 1, 2]])  # the next episode's own


def test_data_the_policy_cannot_take_is_refused_naming_it(
    data: tuple[Path, Path, list[SftEpisode]], tmp_path: Path
) -> None:
    lerobot, _, _ = data
    with pytest.raises(ValueError, match=r"lerobot episode 0: no camera front .*has wrist, side"):
        load_frames([lerobot], ("wrist", "front"), (SIZE, SIZE), log=lambda _: None)
    with pytest.raises(ValueError, match=r"nothing: not a dataset"):
        load_frames([tmp_path / "nothing"], VIEWS, (SIZE, SIZE), log=lambda _: None)
    short = episodes(1)[0]
    three = replace(short, state=short.state[:, :3], state_names=())
    path = write_hdf5(tmp_path / "three.hdf5", [three])
    with pytest.raises(ValueError, match=r"three.hdf5 episode 0: state is 3 values.*takes 8"):
        load_frames([path], VIEWS, (SIZE, SIZE), log=lambda _: None)
    failed = write_hdf5(tmp_path / "failed.hdf5", episodes(2, failed=(0, 1)))
    with pytest.raises(ValueError, match="no successful episodes"):
        load_frames([failed], VIEWS, (SIZE, SIZE), log=lambda _: None)


def test_the_split_holds_out_whole_episodes() -> None:
    train, val = split_episodes(20, 0.2, seed=3)
    assert len(val) == 4 and sorted(train + val) == list(range(20))
    assert split_episodes(20, 0.2, seed=3) == (train, val)
    assert split_episodes(20, 0.2, seed=4) != (train, val)
    assert split_episodes(1, 0.5, seed=0) == ([0], [])


def test_learning_rate_warms_up_then_decays_to_the_minimum() -> None:
    config = SftTrainingConfig(steps=101, warmup_steps=10, learning_rate=1e-3, min_learning_rate=1e-4)
    rates = [learning_rate(step, config) for step in range(101)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert rates[10] == pytest.approx(1e-3) and rates[100] == pytest.approx(1e-4)
    assert rates[55] == pytest.approx(5.5e-4)  # halfway down the cosine
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    # A short run warms up for a tenth of its steps at most.
    short = replace(config, steps=20)
    assert learning_rate(0, short) == pytest.approx(5e-4) and learning_rate(1, short) == pytest.approx(1e-3)


@pytest.mark.parametrize("head", ["flow", "ar"])
def test_training_writes_weights_checkpoint_and_metrics_with_statistics_from_the_data(
    head: Head, data: tuple[Path, Path, list[SftEpisode]], tmp_path: Path
) -> None:
    lerobot, hdf5, _ = data
    out = tmp_path / "run"
    result = train_sft(
        [lerobot, hdf5],
        out,
        head,
        FAST,
        policy_changes=TINY_HEADS[head],
        log=lambda _: None,
    )
    assert result.steps == 6 and result.train_episodes + result.val_episodes == 6 and result.val_episodes == 1
    assert np.isfinite(result.final_loss) and result.val_loss is not None
    policy = load_policy(out / WEIGHTS_FILE)
    assert policy.head == head and (out / BEST_FILE).is_file()
    metrics = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    assert [m["step"] for m in metrics if m["kind"] == "val"] == [3, 6]
    # Statistics of the training frames (validation episodes excluded).
    frames = load_frames([lerobot, hdf5], VIEWS, (SIZE, SIZE), log=lambda _: None)
    train, _ = split_episodes(len(frames.sources), FAST.val_fraction, FAST.seed)
    index = frames.frames_of(train)
    features = proprio_features(torch.from_numpy(frames.proprio[index]))
    torch.testing.assert_close(policy.feature_mean, features.mean(dim=0))
    actions = torch.from_numpy(frames.actions[index])
    if isinstance(policy, FlowMatchingPolicy):
        torch.testing.assert_close(policy.action_mean, actions.mean(dim=0))
    else:
        assert isinstance(policy, AutoregressivePolicy)
        torch.testing.assert_close(policy.action_high, torch.quantile(actions, 0.99, dim=0))


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(
    data: tuple[Path, Path, list[SftEpisode]], tmp_path: Path
) -> None:
    _, hdf5, _ = data
    changes = TINY_HEADS["flow"]
    train_sft([hdf5], tmp_path / "whole", "flow", FAST, policy_changes=changes, log=lambda _: None)

    class Killed(Exception):
        pass

    def die_after_the_checkpoint(line: str) -> None:
        if line.startswith("step 5/"):  # step 5 done, its update not saved: the checkpoint is step 3's
            raise Killed

    broken = tmp_path / "broken"
    with pytest.raises(Killed):
        train_sft([hdf5], broken, "flow", FAST, policy_changes=changes, log=die_after_the_checkpoint)
    with pytest.raises(ValueError, match="holds a training run already"):
        train_sft([hdf5], broken, "flow", FAST, policy_changes=changes, log=lambda _: None)
    with pytest.raises(ValueError, match="not ar"):
        train_sft([hdf5], broken, "ar", FAST, resume=True, log=lambda _: None)
    logged: list[str] = []
    result = train_sft([hdf5], broken, "flow", FAST, resume=True, log=logged.append)
    assert any(line.endswith("broken at step 3") for line in logged) and result.steps == 6
    whole, resumed = load_policy(tmp_path / "whole" / WEIGHTS_FILE), load_policy(broken / WEIGHTS_FILE)
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def random_base_policy() -> SimBasePolicy:
    """A small embedded base policy with every weight random (GroupNorm scales and shifts too, so
    that reading them back from the graph is tested)."""
    torch.manual_seed(0)
    config = BasePolicyConfig(encoder=ResNet10Config(widths=(8, 8, 16, 16), embedding_dim=8), hidden_dim=32)
    policy = SimBasePolicy(config)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    rng = np.random.default_rng(0)
    policy.set_statistics(
        rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(50, 7)).astype(np.float32)
    )
    return policy.eval()


def test_the_backbone_is_read_back_from_a_base_policy_onnx_file(tmp_path: Path) -> None:
    base = random_base_policy()
    path = tmp_path / "base.onnx"
    export_onnx(base, path, SIZE, SIZE)
    init = base_policy_weights(path)
    expected = {k: v for k, v in base.state_dict().items() if k.startswith(BACKBONE_KEYS)}
    assert init.state.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(init.state[key], value, msg=key)
    assert init.backbone["image_size"] == (SIZE, SIZE) and init.config is None

    config = policy_config("ar", init, {"chunk_horizon": 3})
    assert config.encoder == base.config.encoder and config.hidden_dim == 32 and config.chunk_horizon == 3
    policy = make_policy(config)
    assert "head" in apply_initial_weights(policy, init)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 2, SIZE, SIZE, 3), dtype=torch.uint8, generator=generator)
    proprio = torch.randn(2, PROPRIO_DIM, generator=generator)
    with torch.no_grad():
        features = (proprio_features(proprio) - base.feature_mean) / base.feature_std
        embedding = base.trunk(torch.cat([base.encoder.encode_views(images), features], dim=1))
        torch.testing.assert_close(policy.observation(images, proprio), embedding)
    with pytest.raises(ValueError, match=r"base\.onnx fixes hidden_dim"):
        policy_config("flow", init, {"hidden_dim": 64})


def test_base_policy_files_that_cannot_be_read_are_refused(tmp_path: Path) -> None:
    import onnx

    base = random_base_policy()
    path = tmp_path / "base.onnx"
    export_onnx(base, path, SIZE, SIZE)
    model = onnx.load(str(path))
    (config,) = [p for p in model.metadata_props if p.key == "config"]
    config.value = json.dumps({**json.loads(config.value), "hidden_dim": 64})
    wrong = tmp_path / "wrong.onnx"
    onnx.save(model, str(wrong))
    with pytest.raises(ValueError, match=r"wrong\.onnx: the graph's weights do not fit its config"):
        base_policy_weights(wrong)
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(ValueError, match=r"bare\.onnx: no 'config' metadata"):
        initial_weights(bare)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx")
    with pytest.raises(ValueError, match=r"garbage\.onnx"):
        initial_weights(garbage)


def test_the_shipped_base_policy_initializes_a_policy() -> None:
    init = base_policy_weights(SHIPPED)  # raises unless the rebuilt model reproduces the graph
    assert init.backbone["image_size"] == (128, 128) and init.backbone["views"] == VIEWS
    config = policy_config("flow", init, {})
    assert config.image_size == (128, 128) and config.encoder.widths == (16, 32, 64, 128)


def test_weights_of_an_earlier_run_carry_the_head_when_it_fits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    earlier = make_policy(FlowMatchingConfig(**TINY_HEADS["flow"]))  # type: ignore[arg-type]
    earlier.set_statistics(
        np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32),
        np.random.default_rng(1).normal(size=(20, ACTION_DIM)).astype(np.float32),
    )
    path = save_policy(earlier, tmp_path / "policy.safetensors")
    init = initial_weights(tmp_path)  # a run directory names its policy.safetensors

    same = make_policy(policy_config("flow", init, {}))
    assert "head and action statistics from" in apply_initial_weights(same, init)
    for (name, a), (_, b) in zip(same.state_dict().items(), earlier.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)

    for head, changes in (("ar", {}), ("flow", {"chunk_horizon": 5})):
        other = make_policy(policy_config(head, init, changes))  # type: ignore[arg-type]
        assert "start fresh" in apply_initial_weights(other, init)
        for key, value in earlier.state_dict().items():
            if key.startswith(BACKBONE_KEYS):
                torch.testing.assert_close(other.state_dict()[key], value, msg=key)
    assert path.name == WEIGHTS_FILE
