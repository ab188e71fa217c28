from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
import yaml

from pld_ros.profile import (
    FrankyArm,
    Profile,
    ProfileError,
    load_profile,
    parse_profile,
    resolve_profile_path,
)
from pld_ros.training.reward_metadata import RewardModelMetadata
from tests.conftest import CONFIG_DIR

SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))


def minimal() -> dict[str, Any]:
    return {
        "name": "t",
        "robot_id": "r1",
        "arms": {
            "arm": {
                "driver": "franky",
                "safety": {"workspace_min": [0.2, -0.3, 0.0], "workspace_max": [0.7, 0.3, 0.5]},
            }
        },
        "cameras": {"wrist": {"driver": "opencv", "source": "0"}},
    }


def problem(data: dict[str, Any]) -> str:
    with pytest.raises(ProfileError) as info:
        parse_profile(data, Path("/profiles/bad.yaml"))
    return str(info.value)


def test_shipped_profiles_exist_for_both_robots_and_their_simulated_variants() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"franka_pick_cube", "franka_pick_cube_sim", "yam_gpu_insertion", "yam_gpu_insertion_sim"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_profile_loads(path: Path) -> None:
    profile = load_profile(path)
    assert profile.simulated == path.stem.endswith("_sim")


def test_simulated_variant_overrides_only_what_it_names() -> None:
    real = load_profile("franka_pick_cube", config_dir=CONFIG_DIR)
    sim = load_profile("franka_pick_cube", sim=True, config_dir=CONFIG_DIR)
    real_arm, sim_arm = real.arms["arm"], sim.arms["arm"]
    assert isinstance(real_arm, FrankyArm) and isinstance(sim_arm, FrankyArm)
    assert (sim_arm.host, sim_arm.realtime) == ("127.0.0.1", "ignore")
    # Inherited unchanged: the safety limits are the real robot's.
    assert sim_arm.safety == real_arm.safety
    assert sim.cameras["wrist"].driver == "sim"
    assert sim.cameras["wrist"].policy_view == real.cameras["wrist"].policy_view
    assert sim.reward is not None and sim.reward.backend == "privileged"


def test_model_paths_are_relative_to_the_profile() -> None:
    sim = load_profile("franka_pick_cube", sim=True, config_dir=CONFIG_DIR)
    assert sim.policies is not None
    assert sim.policies.base.path == CONFIG_DIR / "models" / "franka_pick_cube_base.onnx"


def test_an_overlay_elsewhere_keeps_its_bases_paths_and_resolves_its_own(tmp_path: Path) -> None:
    overlay = tmp_path / "mine_sim.yaml"
    overlay.write_text(
        f"extends: {CONFIG_DIR / 'franka_pick_cube_sim.yaml'}\n"
        "supervisor: {run_directory: runs}\nbuffer: {directory: ~/episodes}\n"
    )
    profile = load_profile(overlay)
    assert profile.policies is not None
    assert profile.policies.base.path == CONFIG_DIR / "models" / "franka_pick_cube_base.onnx"
    assert profile.supervisor.run_directory == tmp_path / "runs"
    assert profile.buffer.directory == Path.home() / "episodes"
    # A default path is expanded like a given one.
    assert profile.recording.directory == Path.home() / ".local" / "share" / "pld" / "bags"


def test_sim_flag_on_a_real_profile_path_is_refused() -> None:
    with pytest.raises(ProfileError, match="no 'simulation' section"):
        load_profile(CONFIG_DIR / "franka_pick_cube.yaml", sim=True)


def test_unknown_profile_name_lists_the_known_ones() -> None:
    with pytest.raises(ProfileError, match=r"no profile named 'nope'.*franka_pick_cube"):
        resolve_profile_path("nope", config_dir=CONFIG_DIR)


def test_missing_field_is_named() -> None:
    data = minimal()
    del data["robot_id"]
    assert "robot_id: required field is missing" in problem(data)


def test_missing_nested_field_is_named_with_its_path() -> None:
    data = minimal()
    del data["arms"]["arm"]["safety"]["workspace_max"]
    assert "arms.arm.franky.safety.workspace_max: required field is missing" in problem(data)


def test_wrong_type_names_field_value_and_reason() -> None:
    data = minimal()
    data["cameras"]["wrist"]["fps"] = "fast"
    message = problem(data)
    assert "cameras.wrist.fps" in message
    assert "'fast'" in message
    assert "valid integer" in message


def test_unknown_driver_lists_the_valid_ones() -> None:
    data = minimal()
    data["arms"]["arm"]["driver"] = "ur5"
    message = problem(data)
    assert "arms.arm" in message and "'ur5'" in message
    assert "'franky'" in message and "'i2rt'" in message


@pytest.mark.parametrize(
    ("section", "key"),
    [("supervisor", "control_rate"), ("cameras.wrist", "fps"), ("cameras.wrist", "stale_after")],
)
def test_negative_rate_is_refused(section: str, key: str) -> None:
    data = minimal()
    target = data
    for part in section.split("."):
        target = target.setdefault(part, {})
    target[key] = -20
    message = problem(data)
    assert f"{section}.{key}" in message
    assert "greater than 0" in message and "-20" in message


def test_typo_in_a_safety_limit_is_not_silently_ignored() -> None:
    data = minimal()
    data["arms"]["arm"]["safety"]["max_translaton_step"] = 0.5
    assert "max_translaton_step: unknown field" in problem(data)


def test_inverted_workspace_box_is_refused() -> None:
    data = minimal()
    data["arms"]["arm"]["safety"]["workspace_min"] = [0.8, -0.3, 0.0]
    assert "workspace_min.x (0.8) must be below workspace_max.x (0.7)" in problem(data)


def test_policy_view_must_name_a_camera() -> None:
    data = minimal()
    data["policies"] = {
        "base": {"backend": "openpi", "uri": "ws://x:8000", "prompt": "p", "views": ["wrist", "top"]}
    }
    assert "view 'top' is not a camera" in problem(data)


def test_stage_transitions_must_name_stages() -> None:
    data = minimal()
    data["reward"] = {
        "backend": "onnx",
        "path": "m.onnx",
        "views": ["wrist"],
        "stages": [{"name": "a", "on_success": "b"}],
    }
    assert "on_success 'b' is not a stage" in problem(data)


def test_privileged_reward_needs_simulation() -> None:
    data = minimal()
    data["reward"] = {"backend": "privileged", "views": ["wrist"], "stages": [{"name": "a"}]}
    assert "privileged' reward needs a 'simulation' section" in problem(data)


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match=r"broken.yaml: not valid YAML"):
        load_profile(bad)


def test_extends_loop_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ProfileError, match="'extends' loops"):
        load_profile(tmp_path / "a.yaml")


def test_extends_merges_mappings_and_replaces_lists(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(minimal()))
    (tmp_path / "child.yaml").write_text(
        yaml.safe_dump(
            {
                "extends": "base.yaml",
                "arms": {"arm": {"host": "10.0.0.5"}},
                "simulation": {"world": "franka_pick_cube"},
            }
        )
    )
    child = load_profile(tmp_path / "child.yaml", sim=True)
    arm = child.arms["arm"]
    assert isinstance(arm, FrankyArm) and arm.host == "10.0.0.5"
    assert arm.safety.workspace_max == (0.7, 0.3, 0.5)


def test_profile_models_are_immutable() -> None:
    profile = Profile.model_validate(minimal())
    with pytest.raises(ValueError, match="frozen"):
        profile.name = "other"  # type: ignore[misc]


# ---- reward: decision thresholds from the model's metadata -----------------------------------


def reward_model(path: Path, thresholds: list[float] | None) -> Path:
    """An ONNX file with (or without) the metadata ``pld reward train`` writes. The graph is empty:
    loading a profile reads the metadata only."""
    model = onnx.helper.make_model(onnx.helper.make_graph([], "reward", [], []))
    if thresholds is not None:
        metadata = RewardModelMetadata(
            views=("wrist",),
            heads=tuple(f"head{i}" for i in range(len(thresholds))),
            thresholds=tuple(thresholds),
            precision_target=0.99,
        )
        for key, value in metadata.props().items():
            model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def with_reward(path: Path, backend: str = "onnx", **stages: dict[str, Any]) -> dict[str, Any]:
    data = minimal()
    names = list(stages)
    data["reward"] = {
        "backend": backend,
        "path": str(path),
        "views": ["wrist"],
        "stages": [
            {"name": name, "on_success": names[i + 1] if i + 1 < len(names) else "done", **fields}
            for i, (name, fields) in enumerate(stages.items())
        ],
    }
    return data


def test_a_stage_without_threshold_takes_the_models_own_for_its_head(tmp_path: Path) -> None:
    model = reward_model(tmp_path / "reward.onnx", [0.73, 0.91])
    data = with_reward(model, grasp={"head": 1}, lift={"head": 0}, hold={"head": 1, "threshold": 0.6})
    profile = parse_profile(data, tmp_path / "p.yaml")
    assert profile.reward is not None
    # Per head; a given threshold overrides the model's.
    assert [s.threshold for s in profile.reward.stages] == [0.91, 0.73, 0.6]


def test_a_relative_model_path_is_read_relative_to_the_profile(tmp_path: Path) -> None:
    reward_model(tmp_path / "reward.onnx", [0.8])
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(with_reward(Path("reward.onnx"), lift={})))
    profile = load_profile(tmp_path / "p.yaml")
    assert profile.reward is not None and profile.reward.stages[0].threshold == 0.8


def test_given_thresholds_never_read_the_model(tmp_path: Path) -> None:
    data = with_reward(tmp_path / "absent.onnx", lift={"threshold": 0.9})
    profile = parse_profile(data, tmp_path / "p.yaml")
    assert profile.reward is not None and profile.reward.stages[0].threshold == 0.9


def test_a_model_without_thresholds_and_a_stage_without_one_is_an_error(tmp_path: Path) -> None:
    model = reward_model(tmp_path / "plain.onnx", None)
    message = problem(with_reward(model, lift={}))
    assert f"reward.stages[0] (lift): no threshold, and the model {model} has none in its metadata" in message


def test_a_missing_model_without_thresholds_is_an_error_naming_the_file(tmp_path: Path) -> None:
    assert f"{tmp_path / 'absent.onnx'}: no such model file" in problem(
        with_reward(tmp_path / "absent.onnx", lift={})
    )


def test_a_garbage_model_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    model = tmp_path / "garbage.onnx"
    model.write_bytes(b"\xff" * 64)
    assert f"{model}: not a readable ONNX model" in problem(with_reward(model, lift={}))


def test_a_head_the_models_metadata_does_not_cover_is_an_error(tmp_path: Path) -> None:
    model = reward_model(tmp_path / "reward.onnx", [0.8])
    message = problem(with_reward(model, grasp={"head": 0}, lift={"head": 1}))
    assert "reward.stages[1] (lift): no threshold" in message and "not head 1" in message


def test_the_torch_backend_needs_given_thresholds(tmp_path: Path) -> None:
    message = problem(with_reward(tmp_path / "m.safetensors", "torch", lift={}))
    assert "reward.stages[0] (lift): no threshold, and the torch backend's file" in message


def test_the_privileged_backend_keeps_the_default_threshold(tmp_path: Path) -> None:
    data = with_reward(tmp_path / "absent.onnx", "privileged", lift={})
    data["reward"]["path"] = None
    data["simulation"] = {"world": "franka_pick_cube"}
    profile = parse_profile(data, tmp_path / "p.yaml")
    assert profile.reward is not None and profile.reward.stages[0].threshold == 0.5
