"""The ONNX backend on small models built here with onnx.helper (no real VLA fits in a test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pld_ros.core.observation import Observation
from pld_ros.policies.base_policy import PolicyOutputError, make_base_policy
from pld_ros.policies.onnx_policy import OnnxPolicy
from pld_ros.policies.onnx_runtime import choose_providers
from pld_ros.profile import BasePolicy as BasePolicyConfig

VIEWS = ("wrist", "side")


def build_model(
    path: Path,
    *,
    views: int | str = 2,
    size: tuple[int | str, int | str] = (8, 8),
    horizon: int = 4,
    single: bool = False,
    input_names: tuple[str, str] = ("images", "proprio"),
) -> Path:
    """actions[b, i] = proprio[b, :7] + (i + 1) * 0.1 + mean(images[b]) / 255 (in every column)."""
    images_name, proprio_name = input_names
    image_shape: list[str | int | None] = ["B", views, *size, 3]
    images = helper.make_tensor_value_info(images_name, TensorProto.UINT8, image_shape)
    proprio = helper.make_tensor_value_info(proprio_name, TensorProto.FLOAT, ["B", 8])
    out_shape: list[str | int | None] = ["B", 7] if single else ["B", horizon, 7]
    actions = helper.make_tensor_value_info("actions", TensorProto.FLOAT, out_shape)
    ramp = (np.arange(1, horizon + 1, dtype=np.float32)[None, :, None] * 0.1).repeat(7, axis=2)
    initializers = [
        numpy_helper.from_array(np.array([1, 2, 3, 4], dtype=np.int64), "image_axes"),
        numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "start"),
        numpy_helper.from_array(np.array([7], dtype=np.int64), "end"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(ramp, "ramp"),
    ]
    nodes = [
        helper.make_node("Cast", [images_name], ["images_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["images_f", "image_axes"], ["mean"], keepdims=1),  # [B,1,1,1,1]
        helper.make_node("Div", ["mean", "scale"], ["brightness5"]),
        helper.make_node("Slice", [proprio_name, "start", "end", "axis1"], ["head"]),  # [B, 7]
    ]
    if single:
        nodes += [
            helper.make_node("Squeeze", ["brightness5", "image_axes"], ["brightness"]),  # [B]
            helper.make_node("Unsqueeze", ["brightness", "axis1"], ["brightness2"]),  # [B, 1]
            helper.make_node("Add", ["head", "brightness2"], ["actions"]),
        ]
    else:
        nodes += [
            helper.make_node("Squeeze", ["brightness5", "axis1"], ["brightness"]),  # [B,1,1,1]
            helper.make_node("Squeeze", ["brightness", "axis1"], ["brightness3"]),  # [B,1,1]
            helper.make_node("Unsqueeze", ["head", "axis1"], ["head3"]),  # [B,1,7]
            helper.make_node("Add", ["head3", "ramp"], ["rows"]),
            helper.make_node("Add", ["rows", "brightness3"], ["actions"]),
        ]
    graph = helper.make_graph(nodes, "tiny_policy", [images, proprio], [actions], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def observation(size: int = 8, brightness: int = 51) -> Observation:
    view = np.full((size, size, 3), brightness, dtype=np.uint8)
    proprio = np.arange(8, dtype=np.float32)
    return Observation(views={"wrist": view, "side": view}, proprio=proprio, prompt="pick", stamp=1.0)


def test_a_chunk_model_predicts_from_the_stacked_views_and_the_proprioception(tmp_path: Path) -> None:
    policy = OnnxPolicy(build_model(tmp_path / "chunk.onnx"), VIEWS)
    actions = policy.infer(observation(brightness=51))
    assert actions.dtype == np.float32 and actions.shape == (4, 7)
    expected = np.arange(7)[None, :] + 0.1 * np.arange(1, 5)[:, None] + 0.2
    np.testing.assert_allclose(actions, expected, rtol=1e-6)
    assert policy.name == "onnx:chunk.onnx" and policy.connected
    assert policy.providers[-1] == "CPUExecutionProvider"


def test_a_single_action_model_is_a_chunk_of_one_through_make_base_policy(tmp_path: Path) -> None:
    path = build_model(tmp_path / "single.onnx", single=True, size=("H", "W"))
    config = BasePolicyConfig(backend="onnx", path=path, prompt="pick", views=VIEWS)
    policy = make_base_policy(config)
    actions = policy.infer(observation(size=12, brightness=0))
    np.testing.assert_allclose(actions, np.arange(7, dtype=np.float32)[None, :])


def test_a_longer_horizon_in_the_profile_than_the_model_gives_is_a_clear_error(tmp_path: Path) -> None:
    config = BasePolicyConfig(
        backend="onnx", path=build_model(tmp_path / "m.onnx"), prompt="p", views=VIEWS, chunk_horizon=8
    )
    with pytest.raises(PolicyOutputError, match="4 rows, the profile's chunk_horizon is 8"):
        make_base_policy(config).infer(observation())


def test_cuda_is_preferred_when_present_and_the_cpu_is_always_kept() -> None:
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_models_that_do_not_fit_the_contract_are_refused_naming_the_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"inputs 'images' and 'proprio'.*\['image', 'proprio'\]"):
        OnnxPolicy(build_model(tmp_path / "names.onnx", input_names=("image", "proprio")), VIEWS)
    with pytest.raises(ValueError, match="takes 3 views, the profile gives 2"):
        OnnxPolicy(build_model(tmp_path / "views.onnx", views=3), VIEWS)
    policy = OnnxPolicy(build_model(tmp_path / "size.onnx", size=(8, 8)), VIEWS)
    with pytest.raises(ValueError, match=r"takes 8x8 images.*views are 16x16"):
        policy.infer(observation(size=16))
    with pytest.raises(KeyError, match="no view side"):
        OnnxPolicy(build_model(tmp_path / "ok.onnx"), ("wrist", "side")).infer(
            Observation(
                views={"wrist": np.zeros((8, 8, 3), np.uint8)},
                proprio=np.zeros(8, np.float32),
                prompt="",
                stamp=0.0,
            )
        )


def test_a_missing_or_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OnnxPolicy(tmp_path / "absent.onnx", VIEWS)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        OnnxPolicy(tmp_path / "junk.onnx", VIEWS)
