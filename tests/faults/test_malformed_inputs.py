"""Malformed inputs at the system's entry points: a profile given to `pld launch`, a dataset given to
`pld sft train`. Each must stop with an error naming the file and the field, start nothing and
write nothing. (Bags cut or damaged by a real graph, and corrupt weights announced to a running
robot, are in test_graph_faults.py; the readers' own checks in tests/pld_ros/.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from pld_ros.training.sft_commands import app as sft_app
from tests.conftest import CONFIG_DIR
from tests.pld_ros.training.sft_data import SIZE, episodes, write_lerobot
from tests.processes import Watched

pytestmark = pytest.mark.faults


def launch(profile: Path) -> tuple[int, str]:
    run = Watched([sys.executable, "-m", "pld_ros.cli", "launch", str(profile), "--duration", "5"])
    try:
        code = run.wait_exit(timeout=120)
    finally:
        run.kill()
    return code, run.output


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"arms": {"arm": {"safety": {"max_translaton_step": 0.5}}}}, "max_translaton_step: unknown field"),
        ({"arms": {"arm": {"safety": {"workspace_min": [0.8, 0.0, 0.0]}}}}, "workspace_min.x (0.8)"),
        ({"cameras": {"wrist": {"fps": "fast"}}}, "cameras.wrist.fps"),
    ],
)
def test_a_malformed_profile_names_its_field_and_starts_no_node(
    tmp_path: Path, change: dict[str, object], named: str
) -> None:
    profile = tmp_path / "bad.yaml"
    profile.write_text(yaml.safe_dump({"extends": str(CONFIG_DIR / "franka_pick_cube_sim.yaml"), **change}))
    code, output = launch(profile)
    assert code != 0, output
    assert str(profile) in output and named in output, output
    assert "[sim_world]" not in output and "[arm_driver]" not in output, "a node started"


def sft_train(dataset: Path, out: Path) -> tuple[int, str]:
    result = CliRunner().invoke(
        sft_app,
        [
            "train",
            str(dataset),
            "--out",
            str(out),
            "--steps",
            "1",
            "--threads",
            "1",
            "--image-size",
            str(SIZE),
        ],
    )
    return result.exit_code, result.output


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_lerobot(tmp_path / "dataset", episodes(2))


def test_a_dataset_with_a_broken_info_json_is_refused_naming_the_file(dataset: Path, tmp_path: Path) -> None:
    info = dataset / "meta" / "info.json"
    info.write_text(info.read_text()[:-20])  # cut: no longer JSON
    code, output = sft_train(dataset, tmp_path / "run")
    assert code == 2 and f"{info}: not a LeRobot dataset" in output, output
    assert not (tmp_path / "run").exists()


def test_a_dataset_with_a_truncated_parquet_file_is_refused_naming_the_file(
    dataset: Path, tmp_path: Path
) -> None:
    [data] = sorted((dataset / "data").rglob("*.parquet"))
    pq.read_table(data)  # whole before the damage
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    code, output = sft_train(dataset, tmp_path / "run")
    assert code == 2 and str(data) in output, output
    assert not (tmp_path / "run").exists()
