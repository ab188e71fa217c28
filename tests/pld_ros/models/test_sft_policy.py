"""Stage 3's two policies: both heads learn a deterministic mapping, the token head's bins round-trip,
its cached greedy decoding agrees with teacher forcing, weights files round-trip, and the ONNX
export of each runs in onnxruntime like torch and is taken by the base-policy node's backend."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pld_ros.core.observation import ACTION_DIM, PROPRIO_DIM, Observation
from pld_ros.models.resnet10 import ResNet10Config
from pld_ros.models.sft_policy import (
    AutoregressiveConfig,
    AutoregressivePolicy,
    FlowMatchingConfig,
    FlowMatchingPolicy,
    SftPolicy,
    export_onnx,
    head_config,
    load_policy,
    make_policy,
    read_policy_config,
    save_policy,
)
from pld_ros.policies.base_policy import make_base_policy
from pld_ros.profile import BasePolicy as BasePolicyConfig

SIZE = 16
VIEWS = ("wrist", "side")
HORIZON = 2
SHARED = {
    # Widths of 8 and up: with fewer channels than 2 per GroupNorm group the brightness, the only
    # cue here, is normalized away.
    "encoder": ResNet10Config(widths=(8, 8, 16, 16), embedding_dim=8),
    "views": VIEWS,
    "hidden_dim": 32,
    "num_layers": 1,
    "chunk_horizon": HORIZON,
    "image_size": (SIZE, SIZE),
}
TINY_FLOW = FlowMatchingConfig(**SHARED, flow_hidden_dim=64, flow_layers=2, num_inference_steps=10)  # type: ignore[arg-type]
TINY_AR = AutoregressiveConfig(**SHARED, num_bins=64, model_dim=32, num_heads=2, decoder_layers=1)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Two threads on a 2-core machine shared with other work spin against each other: 100x slower.
    torch.set_num_threads(1)


def mapping(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frames whose brightness sets the chunk: images ``[N, 2, 16, 16, 3]``, proprio, chunks."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.0, 1.0, count).astype(np.float32)
    images = np.broadcast_to(
        (level * 255).astype(np.uint8)[:, None, None, None, None], (count, 2, SIZE, SIZE, 3)
    )
    proprio = np.tile(np.array([0.4, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=np.float32), (count, 1))
    chunks = np.zeros((count, HORIZON, ACTION_DIM), dtype=np.float32)
    chunks[:, :, 0] = (0.02 * level - 0.01)[:, None] * np.array([1.0, 0.5])
    chunks[:, :, 2] = -0.01 * level[:, None]
    chunks[:, :, 6] = (level > 0.5)[:, None]
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(proprio), torch.from_numpy(chunks)


def fit(policy: SftPolicy, steps: int = 400, lr: float = 1e-3) -> tuple[float, float]:
    """Full-batch AdamW on 48 frames; the loss before and after."""
    images, proprio, chunks = mapping(48)
    policy.set_statistics(proprio.numpy(), chunks.reshape(-1, ACTION_DIM).numpy())
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(1)
    before = policy.loss(images, proprio, chunks, generator).item()
    for _ in range(steps):
        loss = policy.loss(images, proprio, chunks)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return before, policy.loss(images, proprio, chunks, generator).item()


MOVING = [0, 2, 6]
"""The action values the mapping sets (the others are always 0)."""


def normalized_error(predicted: torch.Tensor, chunks: torch.Tensor) -> float:
    """Mean absolute error of the moving values, in units of each one's range in the data."""
    span = chunks.amax(dim=(0, 1)) - chunks.amin(dim=(0, 1))
    return float(((predicted - chunks).abs()[..., MOVING] / span[MOVING]).mean())


def test_flow_head_learns_a_deterministic_mapping_and_samples_near_the_data() -> None:
    torch.manual_seed(0)
    policy = FlowMatchingPolicy(TINY_FLOW)
    before, after = fit(policy)
    assert after < 0.25 < 1.0 < before
    images, proprio, chunks = mapping(48)  # the training frames
    held_images, held_proprio, held_chunks = mapping(16, seed=7)  # brightness levels not seen
    with torch.no_grad():
        zero_noise = policy(images, proprio)
        sampled = policy.sample(held_images, held_proprio, torch.randn(16, HORIZON, ACTION_DIM))
    # Random noise or none, the flow lands within a few percent of each value's range.
    assert normalized_error(zero_noise, chunks) < 0.06
    assert normalized_error(sampled, held_chunks) < 0.12
    # An untrained flow is far off: the bound above is not met by chance.
    with torch.no_grad():
        untrained = FlowMatchingPolicy(TINY_FLOW)
        untrained.set_statistics(proprio.numpy(), chunks.reshape(-1, ACTION_DIM).numpy())
        assert normalized_error(untrained(images, proprio), chunks) > 0.2


def test_token_head_learns_the_mapping_by_teacher_forcing_and_decodes_it_greedily() -> None:
    torch.manual_seed(0)
    policy = AutoregressivePolicy(TINY_AR)
    # 600 steps: after 400, on an AMD EPYC (one thread), the frame at brightness 0.48, next to the
    # gripper's 0.5 threshold, still decoded closed.
    before, after = fit(policy, steps=600)
    assert after < 0.4 < 4.0 < before  # cross-entropy per token; uniform over 64 bins is 4.16
    images, proprio, chunks = mapping(48)
    with torch.no_grad():
        decoded = policy(images, proprio)
    assert normalized_error(decoded, chunks) < 0.05
    # The values the data never moves decode to the bin holding 0.
    assert float(decoded[..., [1, 3, 4, 5]].abs().max()) <= float(policy.bin_width.max())
    # The gripper (two values, 0 and 1, at the two edge bins) is decoded exactly right.
    assert torch.equal(torch.round(decoded[..., 6]), chunks[..., 6])


def test_tokenization_round_trips_within_one_bin_width() -> None:
    policy = AutoregressivePolicy(TINY_AR)
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(500, ACTION_DIM, generator=generator) * torch.tensor(
        [0.01, 0.02, 0.01, 0.1, 0.1, 0.1, 1.0]
    )
    data[:, 4] = 0.0  # a value the data never moves still gets bins
    policy.set_action_statistics(data)
    low, high, width = policy.action_low, policy.action_high, policy.bin_width
    assert torch.all(width > 0)
    inside = low + torch.rand(300, HORIZON, ACTION_DIM, generator=generator) * (high - low)
    inside[0, 0] = low  # both edges exactly
    inside[0, 1] = high
    tokens = policy.tokenize(inside)
    assert tokens.shape == (300, HORIZON * ACTION_DIM) and tokens.dtype == torch.int64
    assert int(tokens.min()) >= 0 and int(tokens.max()) < TINY_AR.num_bins
    error = (policy.detokenize(tokens) - inside).abs()
    assert torch.all(error <= width / 2 + 1e-7)
    # Beyond the quantiles: the edge bins.
    outside = torch.stack([low - 1.0, high + 1.0])[:, None, :].expand(2, HORIZON, ACTION_DIM)
    edges = policy.tokenize(outside).reshape(2, HORIZON, ACTION_DIM)
    assert torch.all(edges[0] == 0) and torch.all(edges[1] == TINY_AR.num_bins - 1)
    # The bins span the 1st to 99th percentile of the data, as OpenVLA's.
    expected = torch.quantile(data[:, 0], torch.tensor([0.01, 0.99]))
    torch.testing.assert_close(torch.stack([low[0], high[0]]), expected)


def test_cached_greedy_decoding_agrees_with_teacher_forcing() -> None:
    """Each decoded token is the most likely one under the teacher-forced logits of the decoded
    sequence: the key/value cache computes what the causal mask computes."""
    torch.manual_seed(3)
    policy = AutoregressivePolicy(TINY_AR).eval()
    images, proprio, _ = mapping(5)
    with torch.no_grad():
        tokens = policy.generate(images, proprio)
        logits = policy.token_logits(images, proprio, tokens)
    assert tokens.shape == (5, TINY_AR.num_tokens)
    assert torch.equal(logits.argmax(dim=-1), tokens)


def random_inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, len(VIEWS), SIZE, SIZE, 3), dtype=torch.uint8, generator=generator)
    return images, torch.randn(batch, PROPRIO_DIM, generator=generator)


P = TypeVar("P", bound=SftPolicy)


def trained_statistics(policy: P) -> P:
    """Non-trivial normalization, so the export must carry the statistics to match."""
    _, proprio, chunks = mapping(48)
    policy.set_statistics(
        proprio.numpy() + np.random.default_rng(0).normal(size=proprio.shape).astype(np.float32),
        chunks.reshape(-1, ACTION_DIM).numpy(),
    )
    return policy.eval()


@pytest.mark.parametrize("config", [TINY_FLOW, TINY_AR], ids=["flow", "ar"])
def test_onnx_export_matches_torch_and_is_taken_by_the_base_policy_backend(
    config: FlowMatchingConfig | AutoregressiveConfig, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    policy = trained_statistics(make_policy(config))
    path = export_onnx(policy, tmp_path / "policy.onnx")
    images, proprio = random_inputs(3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actions,) = session.run(["actions"], {"images": images.numpy(), "proprio": proprio.numpy()})
    with torch.no_grad():
        expected = policy(images, proprio).numpy()
    assert actions.shape == (3, HORIZON, ACTION_DIM)  # the batch stays dynamic
    np.testing.assert_allclose(actions, expected, atol=1e-5, rtol=1e-4)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["head"] == policy.head and props["views"] == "wrist,side"
    assert type(config).from_json(props["config"]) == config
    assert props.get("noise") == ("zero" if policy.head == "flow" else None)

    # As the base-policy node builds its backend from the profile.
    backend = make_base_policy(
        BasePolicyConfig(backend="onnx", path=path, prompt="pick", views=VIEWS, chunk_horizon=HORIZON)
    )
    observation = Observation(
        views={name: images[0, v].numpy() for v, name in enumerate(VIEWS)},
        proprio=proprio[0].numpy(),
        prompt="pick",
        stamp=0.0,
    )
    chunk = backend.infer(observation)
    assert chunk.shape == (HORIZON, ACTION_DIM)
    np.testing.assert_allclose(chunk, expected[0], atol=1e-5, rtol=1e-4)
    backend.close()


def test_flow_export_integrates_from_zero_noise() -> None:
    torch.manual_seed(0)
    policy = trained_statistics(FlowMatchingPolicy(TINY_FLOW))
    images, proprio = random_inputs(2)
    with torch.no_grad():
        deterministic = policy(images, proprio)
        zero = policy.sample(images, proprio, torch.zeros(2, HORIZON, ACTION_DIM))
        noisy = policy.sample(images, proprio, torch.randn(2, HORIZON, ACTION_DIM))
    torch.testing.assert_close(deterministic, zero)
    assert not torch.allclose(deterministic, noisy)


@pytest.mark.parametrize("config", [TINY_FLOW, TINY_AR], ids=["flow", "ar"])
def test_weights_files_round_trip_with_head_and_config(
    config: FlowMatchingConfig | AutoregressiveConfig, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    policy = trained_statistics(make_policy(config))
    path = save_policy(policy, tmp_path / "policy.safetensors")
    assert read_policy_config(path) == (policy.head, config)
    loaded = load_policy(path)
    images, proprio = random_inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, proprio), policy(images, proprio))


def test_files_of_another_kind_are_refused_with_their_name(tmp_path: Path) -> None:
    text = tmp_path / "notes.safetensors"
    text.write_text("not weights")
    with pytest.raises(ValueError, match=r"notes\.safetensors"):
        load_policy(text)
    from safetensors.torch import save_file

    other = tmp_path / "actor.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"config": "{}"})
    with pytest.raises(ValueError, match=r"actor\.safetensors: not an SFT policy"):
        load_policy(other)


def test_configs_are_checked() -> None:
    with pytest.raises(ValueError, match="multiple of num_heads"):
        AutoregressiveConfig(model_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="even"):
        FlowMatchingConfig(time_embedding_dim=63)
    with pytest.raises(ValueError, match="distinct"):
        FlowMatchingConfig(views=("wrist", "wrist"))
    with pytest.raises(ValueError, match="the flow head has no setting num_bins"):
        head_config("flow", num_bins=128)
    assert head_config("ar", num_bins=128) == AutoregressiveConfig(num_bins=128)
