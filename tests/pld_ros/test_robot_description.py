from __future__ import annotations

import importlib.util
import io
import shutil
from pathlib import Path

import numpy as np
import pinocchio as pin
import pytest
import yourdfpy

from pld_ros import robot_description
from pld_ros.robot_description import available_models, default_urdf_dir, load_urdf, prefix_urdf
from tests.conftest import ROOT

URDF_DIR = ROOT / "urdf"
MODELS = ("fr3", "panda", "yam")


def parse(text: str) -> yourdfpy.URDF:
    return yourdfpy.URDF.load(io.BytesIO(text.encode()), load_meshes=False)


def names(robot: yourdfpy.URDF) -> set[str]:
    """Every link, joint and material name of a description."""
    return (
        {link.name for link in robot.robot.links}
        | {joint.name for joint in robot.robot.joints}
        | {material.name for material in robot.robot.materials}
    )


@pytest.fixture
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLD_URDF_DIR", raising=False)


@pytest.mark.usefixtures("no_override")
def test_the_source_tree_descriptions_are_found_without_configuration() -> None:
    assert default_urdf_dir() == URDF_DIR
    assert set(MODELS) <= set(available_models())


@pytest.mark.usefixtures("no_override")
@pytest.mark.parametrize("model", MODELS)
def test_without_a_prefix_the_file_comes_back_unchanged(model: str) -> None:
    assert load_urdf(model) == (URDF_DIR / f"{model}.urdf").read_text()


@pytest.mark.usefixtures("no_override")
def test_an_installed_package_finds_its_share_directory(tmp_path: Path) -> None:
    # The colcon install layout: <prefix>/lib/python3.X/site-packages/pld_ros and
    # <prefix>/share/pld_ros/urdf, with no source tree around.
    package = tmp_path / "lib" / "python3.11" / "site-packages" / "pld_ros"
    package.mkdir(parents=True)
    installed = package / "robot_description.py"
    shutil.copy(Path(robot_description.__file__), installed)
    share = tmp_path / "share" / "pld_ros" / "urdf"
    shutil.copytree(URDF_DIR, share)
    spec = importlib.util.spec_from_file_location("installed_robot_description", installed)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.default_urdf_dir() == share
    assert module.load_urdf("yam") == (URDF_DIR / "yam.urdf").read_text()


def test_the_environment_overrides_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "custom.urdf").write_text('<robot name="custom"><link name="only"/></robot>')
    monkeypatch.setenv("PLD_URDF_DIR", str(tmp_path))
    assert default_urdf_dir() == tmp_path
    assert available_models() == ["custom"]
    assert 'name="a_only"' in load_urdf("custom", prefix="a_")


@pytest.mark.usefixtures("no_override")
def test_an_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'ur5'.*available: fr3, panda, yam"):
        load_urdf("ur5")


@pytest.mark.usefixtures("no_override")
@pytest.mark.parametrize("prefix", ["1left_", "left-", "left arm_", "left/"])
def test_a_prefix_that_would_break_ros_names_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="invalid prefix"):
        load_urdf("yam", prefix=prefix)


def test_only_urdf_is_prefixed() -> None:
    with pytest.raises(ValueError, match="not a URDF"):
        prefix_urdf("<sdf/>", "left_")


@pytest.mark.usefixtures("no_override")
@pytest.mark.parametrize("model", MODELS)
def test_a_prefix_reaches_every_name_and_reference(model: str) -> None:
    plain = parse(load_urdf(model))
    left = parse(load_urdf(model, prefix="left_"))
    assert names(left) == {f"left_{name}" for name in names(plain)}
    for joint in left.robot.joints:
        assert joint.parent.startswith("left_") and joint.child.startswith("left_"), joint.name
        if joint.mimic is not None:
            assert joint.mimic.joint in left.joint_map
    for link in left.robot.links:
        for visual in link.visuals:
            assert visual.material is None or visual.material.name in names(left)
    assert left.robot.name == f"left_{model}"
    assert left.validate(), left.errors


@pytest.mark.usefixtures("no_override")
def test_two_prefixed_arms_share_no_name_and_keep_their_kinematics() -> None:
    plain, left, right = (parse(load_urdf("yam", prefix=p)) for p in ("", "left_", "right_"))
    assert names(left).isdisjoint(names(right))
    assert len(names(left)) == len(names(right)) == len(names(plain))
    q = np.array([0.3, 1.2, 0.8, -0.4, 0.5, 1.0, 0.02])
    plain.update_cfg(q)
    left.update_cfg(q)
    want = plain.get_transform("tcp", "base_link")
    np.testing.assert_allclose(left.get_transform("left_tcp", "left_base_link"), want, atol=1e-12)
    np.testing.assert_allclose(
        left.get_transform("left_wrist_camera_optical_frame", "left_base_link"),
        plain.get_transform("wrist_camera_optical_frame", "base_link"),
        atol=1e-12,
    )


@pytest.mark.usefixtures("no_override")
def test_a_prefixed_description_keeps_its_documentation_and_parses_with_urdfdom() -> None:
    text = load_urdf("fr3", prefix="arm_")
    assert "REP-103" in text and "prefixed with 'arm_'" in text
    model = pin.buildModelFromXML(text)
    assert "arm_fr3_joint1" in list(model.names)
