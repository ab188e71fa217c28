from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors import safe_open

from pld_ros.models.resnet10 import ResNet10Config
from pld_ros.models.success_classifier import (
    SuccessClassifier,
    SuccessClassifierConfig,
    export_onnx,
    save_classifier,
)

SMALL = SuccessClassifierConfig(
    encoder=ResNet10Config(widths=(8, 8, 16, 16), embedding_dim=8), num_heads=3, hidden_dim=32
)


def images(batch: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 2, 32, 32, 3), dtype=torch.uint8, generator=generator)


def test_one_probability_per_head() -> None:
    probabilities = SuccessClassifier(SMALL).eval()(images(4))
    assert probabilities.shape == (4, 3)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


def test_onnx_export_round_trip_matches_torch(tmp_path: Path) -> None:
    model = SuccessClassifier(SMALL).eval()
    path = tmp_path / "classifier.onnx"
    export_onnx(model, path, views=2, height=32, width=32)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["probabilities"]
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = images(5, seed=3)
    (out,) = session.run(["probabilities"], {"images": batch.numpy()})
    assert out.dtype == np.float32 and out.shape == (5, 3)
    with torch.inference_mode():
        np.testing.assert_allclose(out, model(batch).numpy(), atol=1e-5)


def test_export_refuses_a_different_view_count(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="takes 2 views"):
        export_onnx(SuccessClassifier(SMALL), tmp_path / "x.onnx", views=3, height=32, width=32)


def test_saved_state_dict_carries_the_config(tmp_path: Path) -> None:
    model = SuccessClassifier(SMALL)
    path = tmp_path / "classifier.safetensors"
    save_classifier(model, path)
    with safe_open(str(path), framework="pt") as f:
        assert SuccessClassifierConfig.from_json(f.metadata()["config"]) == SMALL
