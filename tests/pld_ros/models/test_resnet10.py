from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from pld_ros.models.resnet10 import PAPER_WIDTHS, ResNet10Config, ResNet10Encoder

SMALL = ResNet10Config(widths=(8, 16, 16, 32), embedding_dim=16)


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)


class _Views(torch.nn.Module):
    def __init__(self, encoder: ResNet10Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_views(x)


def test_uint8_images_become_one_embedding_each() -> None:
    encoder = ResNet10Encoder(SMALL)
    out = encoder(images(3, 64, 48, 3))
    assert out.shape == (3, 16) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_views_share_weights_and_are_concatenated_in_order() -> None:
    encoder = ResNet10Encoder(SMALL).eval()
    first, second = images(2, 32, 32, 3, seed=1), images(2, 32, 32, 3, seed=2)
    stacked = torch.stack([first, second], dim=1)
    out = encoder.encode_views(stacked)
    assert out.shape == (2, 32)
    torch.testing.assert_close(out[:, :16], encoder(first))
    torch.testing.assert_close(out[:, 16:], encoder(second))


def test_group_norm_output_does_not_depend_on_the_rest_of_the_batch() -> None:
    encoder = ResNet10Encoder(SMALL).train()
    x = images(4, 32, 32, 3)
    torch.testing.assert_close(encoder(x)[:1], encoder(x[:1]))


def test_paper_widths_and_batch_norm_build() -> None:
    encoder = ResNet10Encoder(ResNet10Config(widths=PAPER_WIDTHS, norm="batch")).eval()
    assert encoder(images(1, 32, 32, 3)).shape == (1, 256)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules())


def test_state_dict_holds_learned_weights_only() -> None:
    keys = ResNet10Encoder(SMALL).state_dict().keys()
    assert "mean" not in keys and "std" not in keys


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"widths": ()}, "widths"),
        ({"widths": (8, 10)}, "multiple"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"std": (0.0, 1.0, 1.0)}, "std"),
    ],
)
def test_bad_config_is_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResNet10Config(**kwargs)  # type: ignore[arg-type]


def test_script_and_trace_match_eager() -> None:
    encoder = ResNet10Encoder(SMALL).eval()
    x = images(2, 2, 32, 32, 3)
    expected = encoder.encode_views(x)
    scripted = torch.jit.script(encoder)
    torch.testing.assert_close(scripted.encode_views(x), expected)
    traced = torch.jit.trace(_Views(encoder), (x,))  # type: ignore[no-untyped-call]
    torch.testing.assert_close(traced(images(2, 2, 32, 32, 3)), encoder.encode_views(images(2, 2, 32, 32, 3)))


def test_onnx_export_matches_torch(tmp_path: Path) -> None:
    encoder = ResNet10Encoder(SMALL).eval()
    x = images(1, 2, 32, 32, 3)
    path = tmp_path / "encoder.onnx"
    torch.onnx.export(
        _Views(encoder),
        (x,),
        str(path),
        input_names=["images"],
        output_names=["embedding"],
        dynamic_axes={"images": {0: "batch"}},
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = images(3, 2, 32, 32, 3, seed=5)
    (out,) = session.run(None, {"images": batch.numpy()})
    np.testing.assert_allclose(out, encoder.encode_views(batch).detach().numpy(), atol=1e-5)
