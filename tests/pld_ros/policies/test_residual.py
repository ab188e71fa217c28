from __future__ import annotations

import numpy as np
import pytest
import torch

from pld_ros.core.episode import RunMode, Source
from pld_ros.core.observation import Observation, hold_action
from pld_ros.models.residual_actor import ResidualActor, ResidualActorConfig
from pld_ros.models.resnet10 import ResNet10Config
from pld_ros.policies.residual import (
    ActorWeights,
    HumanStep,
    OnnxRunner,
    ResidualController,
    TickResult,
    TorchRunner,
    xi_at,
)
from pld_ros.profile import XiSchedule

CONFIG = ResidualActorConfig(encoder=ResNet10Config(widths=(8, 8, 8, 8), embedding_dim=8), hidden_dim=16)
VIEWS = ("wrist", "side")
BASE = np.array([0.01, 0.0, -0.01, 0.0, 0.0, 0.05, 0.5], dtype=np.float32)
OBSERVATION = Observation(
    views={name: np.full((16, 16, 3), 100, np.uint8) for name in VIEWS},
    proprio=np.zeros(8, np.float32),
    prompt="",
    stamp=0.0,
)


def pushing_actor() -> ResidualActor:
    """An actor whose mean residual is +0.5 on every dimension, whatever it sees."""
    actor = ResidualActor(CONFIG)
    with torch.no_grad():
        actor.mean.bias.fill_(float(np.arctanh(0.5)))
        actor.log_std.bias.fill_(CONFIG.log_std_min)
    return actor


def weights_of(actor: ResidualActor, updates: int = 0) -> ActorWeights:
    return ActorWeights(TorchRunner(actor), actor.config.residual_scale, updates)


def tick(
    controller: ResidualController,
    mode: RunMode,
    step: int,
    *,
    k: int = 3,
    updates: int = 0,
    fresh: bool = True,
    human: HumanStep | None = None,
    observation: Observation | None = OBSERVATION,
    actor: ResidualActor | None = None,
) -> TickResult:
    return controller.tick(
        mode=mode,
        probe_steps=k,
        step=step,
        base=BASE.copy() if fresh else hold_action(0.5),
        base_fresh=fresh,
        weights=weights_of(actor or pushing_actor(), updates),
        observation=observation,
        human=human,
        now=10.0,
    )


@pytest.fixture
def controller() -> ResidualController:
    return ResidualController(VIEWS, XiSchedule(start=0.1, end=0.1), hold_time=0.2)


def test_probe_takeover_switches_at_exactly_step_k(controller: ResidualController) -> None:
    actor = pushing_actor()
    sources = [tick(controller, RunMode.PROBE_TAKEOVER, step, k=3, actor=actor).source for step in range(6)]
    assert sources == [Source.BASE] * 3 + [Source.COMBINED] * 3


def test_probing_does_not_compute_the_residual(controller: ResidualController) -> None:
    result = tick(controller, RunMode.PROBE_TAKEOVER, 2, k=3)
    assert result.residual is None and np.array_equal(result.action, BASE)


def test_combined_action_is_base_plus_xi_times_scaled_residual(controller: ResidualController) -> None:
    result = tick(controller, RunMode.RESIDUAL_ONLY, 0)
    assert result.source is Source.COMBINED and result.xi == pytest.approx(0.1)
    assert result.residual is not None
    np.testing.assert_allclose(result.residual, 0.5, atol=1e-5)  # deterministic in evaluation
    scale = np.array(CONFIG.residual_scale, dtype=np.float32)
    np.testing.assert_allclose(result.action, BASE + 0.1 * scale * 0.5, atol=1e-6)


def test_probe_takeover_samples_the_residual(controller: ResidualController) -> None:
    actor = ResidualActor(CONFIG)  # zero mean, std exp(init_log_std)
    residuals = [tick(controller, RunMode.PROBE_TAKEOVER, 5, k=0, actor=actor).residual for _ in range(5)]
    assert all(r is not None for r in residuals)
    assert np.std(np.stack([r for r in residuals if r is not None])) > 0.05


def test_a_fresh_actor_leaves_the_base_action_in_evaluation(controller: ResidualController) -> None:
    result = tick(controller, RunMode.RESIDUAL_ONLY, 0, actor=ResidualActor(CONFIG))
    np.testing.assert_allclose(result.action, BASE)


def test_base_only_never_uses_the_residual(controller: ResidualController) -> None:
    for step in range(5):
        result = tick(controller, RunMode.BASE_ONLY, step, k=0)
        assert result.source is Source.BASE and result.residual is None


def test_a_hold_is_forwarded_without_residual(controller: ResidualController) -> None:
    result = tick(controller, RunMode.RESIDUAL_ONLY, 4, fresh=False)
    assert result.source is Source.BASE
    np.testing.assert_array_equal(result.action, hold_action(0.5))


def test_a_recent_human_step_wins_in_every_phase(controller: ResidualController) -> None:
    human = HumanStep(np.array([0, 0, 0.01, 0, 0, 0, 1], np.float32), received=9.85)
    for mode, step in ((RunMode.BASE_ONLY, 0), (RunMode.PROBE_TAKEOVER, 0), (RunMode.PROBE_TAKEOVER, 9)):
        result = tick(controller, mode, step, human=human)
        assert result.source is Source.HUMAN
        np.testing.assert_array_equal(result.action, human.action)


def test_an_old_human_step_gives_control_back(controller: ResidualController) -> None:
    human = HumanStep(np.zeros(7, np.float32), received=9.7)  # 0.3 s old, hold time 0.2 s
    assert tick(controller, RunMode.RESIDUAL_ONLY, 0, human=human).source is Source.COMBINED


def test_no_observation_falls_back_to_the_base_action_and_says_so(controller: ResidualController) -> None:
    result = tick(controller, RunMode.RESIDUAL_ONLY, 0, observation=None)
    assert result.source is Source.BASE and result.observation_missing


def test_gripper_stays_in_range() -> None:
    actor = pushing_actor()
    with torch.no_grad():
        actor.mean.bias.fill_(float(np.arctanh(0.9)))
    big = ResidualController(VIEWS, XiSchedule(start=1.0, end=1.0), hold_time=0.2)
    result = tick(big, RunMode.RESIDUAL_ONLY, 0, actor=actor)
    assert result.action[6] == 1.0  # 0.5 + 0.9 clipped


def test_xi_ramps_linearly_over_updates_then_stays() -> None:
    schedule = XiSchedule(start=0.1, end=0.5, ramp_updates=1000)
    assert xi_at(schedule, 0) == pytest.approx(0.1)
    assert xi_at(schedule, 500) == pytest.approx(0.3)
    assert xi_at(schedule, 1000) == pytest.approx(0.5)
    assert xi_at(schedule, 5000) == pytest.approx(0.5)
    assert xi_at(XiSchedule(start=0.2, end=0.9, ramp_updates=0), 5000) == pytest.approx(0.2)


def test_xi_comes_from_the_weights_updates() -> None:
    ramp = ResidualController(VIEWS, XiSchedule(start=0.0, end=1.0, ramp_updates=100), hold_time=0.2)
    assert tick(ramp, RunMode.RESIDUAL_ONLY, 0, updates=25).xi == pytest.approx(0.25)


def test_a_malformed_base_action_is_an_error(controller: ResidualController) -> None:
    with pytest.raises(ValueError, match="7 values"):
        controller.tick(
            mode=RunMode.BASE_ONLY,
            probe_steps=0,
            step=0,
            base=np.zeros(6, np.float32),
            base_fresh=True,
            weights=weights_of(ResidualActor(CONFIG)),
            observation=None,
            human=None,
            now=0.0,
        )


def test_onnx_runner_matches_torch() -> None:
    actor = pushing_actor()
    with torch.no_grad():
        for parameter in actor.trunk.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
        actor.mean.weight.normal_(0.0, 0.1)
    images = OBSERVATION.stacked_views(VIEWS)
    base = BASE.copy()
    onnx_mean, onnx_log_std = OnnxRunner(actor, images.shape).distribution(images, OBSERVATION.proprio, base)
    torch_mean, torch_log_std = TorchRunner(actor).distribution(images, OBSERVATION.proprio, base)
    np.testing.assert_allclose(onnx_mean, torch_mean, atol=1e-5)
    np.testing.assert_allclose(onnx_log_std, torch_log_std, atol=1e-5)
