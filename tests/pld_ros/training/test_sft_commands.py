"""``pld sft`` end to end through its typer app: train each head on a LeRobot v3.0 dataset written
by the project's writer, resume, export ONNX, and run the export as the base-policy node does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pld_ros.core.observation import ACTION_DIM, Observation
from pld_ros.models.sft_policy import load_policy
from pld_ros.policies.base_policy import make_base_policy
from pld_ros.profile import BasePolicy as BasePolicyConfig
from pld_ros.training.sft import CHECKPOINT_DIR, WEIGHTS_FILE
from pld_ros.training.sft_commands import app
from tests.pld_ros.training.sft_data import SIZE, VIEWS, episodes, write_lerobot

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lerobot(tmp_path_factory.mktemp("sft_cli") / "dataset", episodes(4, failed=(2,)))


def train(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["train", *args, "--threads", "1", "--image-size", str(SIZE)])
    return result.exit_code, result.output


@pytest.mark.parametrize(("head", "horizon"), [("flow", 2), ("ar", 1)])
def test_train_resume_and_export_a_policy_the_base_policy_node_runs(
    head: str, horizon: int, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    code, output = train(
        str(dataset), "--head", head, "--out", str(out), "--steps", "3", "--batch-size", "4",
        "--chunk-horizon", str(horizon), "--val-every", "2", "--log-every", "1", "--val-fraction", "0.34",
    )  # fmt: skip
    assert code == 0, output
    assert "3 episodes, 30 frames, 1 failed left out" in output
    assert "step 3/3" in output and "validation loss" in output and f"weights {out / WEIGHTS_FILE}" in output
    assert (out / CHECKPOINT_DIR).is_dir()

    code, output = train(str(dataset), "--head", head, "--out", str(out), "--steps", "5", "--resume")
    assert code == 0, output
    assert f"resumed {out} at step 3" in output and "step 5/5" in output

    model = tmp_path / "policy.onnx"
    result = runner.invoke(app, ["export", str(out), "--out", str(model)])
    assert result.exit_code == 0, result.output
    assert f"{head} head, views wrist,side at {SIZE}x{SIZE}, chunks of {horizon}" in result.output

    backend = make_base_policy(
        BasePolicyConfig(backend="onnx", path=model, prompt="pick", views=VIEWS, chunk_horizon=horizon)
    )
    rng = np.random.default_rng(0)
    views = {name: rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for name in VIEWS}
    proprio = rng.normal(size=8).astype(np.float32)
    chunk = backend.infer(Observation(views=views, proprio=proprio, prompt="pick", stamp=0.0))
    assert chunk.shape == (horizon, ACTION_DIM)
    policy = load_policy(out / WEIGHTS_FILE)
    with torch.no_grad():
        images = torch.from_numpy(np.stack([views[name] for name in VIEWS])[None])
        expected = policy(images, torch.from_numpy(proprio[None]))[0].numpy()
    np.testing.assert_allclose(chunk, expected, atol=1e-5, rtol=1e-4)


def test_bad_requests_fail_with_a_message(dataset: Path, tmp_path: Path) -> None:
    code, output = train(str(dataset), "--head", "diffusion", "--out", str(tmp_path / "a"))
    assert code == 2 and "--head must be one of flow, ar" in output
    code, output = train(str(tmp_path / "missing"), "--out", str(tmp_path / "b"))
    assert code == 2 and "missing: not a dataset" in output
    code, output = train(str(dataset), "--out", str(tmp_path / "c"), "--resume")
    assert code == 2 and "no checkpoint to resume" in output
    code, output = train(str(dataset), "--out", str(tmp_path / "d"), "--views", "wrist,front", "--steps", "1")
    assert code == 2 and "no camera front" in output
    result = runner.invoke(app, ["train", str(dataset), "--out", str(tmp_path / "e"), "--image-size", "0x16"])
    assert result.exit_code == 2 and "'0x16': expected N or HxW with positive sizes" in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "no such weights file" in result.output
    assert not (tmp_path / "x.onnx").exists()
