"""PLD's learner: off-policy SAC of a residual actor on top of a frozen base policy.

The residual MDP (see :mod:`pld_ros.learning.episode_steps`): the state is the observation with the
base policy's action for it, the action is the residual ``r`` in ``[-1, 1]^A``. All
hyperparameters come from the profile's :class:`~pld_ros.profile.Trainer` section; the networks'
shape from the actor's :class:`~pld_ros.models.residual_actor.ResidualActorConfig`.

One :meth:`ResidualSAC.update` is one critic step on a batch; every ``critic_actor_ratio``-th
update also takes one actor step and one temperature step on the same batch. The pieces:

- Critic target, PLD's "on-the-fly" backup: ``y = r + reward_bias + discount * (1 - done) *
  max_i min(Q1', Q2')(s', a_b', r_i)`` over ``onthefly_samples`` residuals ``r_i`` sampled from
  the current actor at the next observation with its base action ``a_b'`` held fixed; ``Q'`` are
  the target networks (Polyak rate ``target_update_rate``). With ``backup_entropy`` each sample's
  ``- temperature * log pi(r_i)`` is added before the max. With ``n_step`` > 1: the discounted
  rewards and biases of up to ``n`` steps, and ``discount ** k`` on the next value (see the
  replay buffer).
- Actor: ``temperature * log pi(r|s, a_b) - min(Q1, Q2)(s, a_b, r)``, reparameterized.
- Temperature: automatic, ``log`` parameterized, towards ``target_entropy`` (-A by default).
- :meth:`ResidualSAC.pretrain_step`: a critic step on offline data with Cal-QL's conservative term
  (Nakamoto et al. 2023): ``cql_alpha * (logsumexp_j Q(s, r_j) - Q(s, r_data))`` over
  ``cql_samples`` uniform residuals and as many from the actor, importance-weighted by their
  densities, where the actor's Q values are first raised to at least the Monte-Carlo return
  (``max(Q(s, r_pi), mc_return)``): the critic is pushed down on unseen residuals, but never below
  the value the data showed. The actor does not learn in the pretraining: online learning starts
  from the base policy (a fresh actor's residual is zero) with a calibrated critic. The
  pretraining's TD target is therefore the value of that starting policy, read at the actor's
  deterministic residual, not the on-the-fly max over its samples (our choice): the samples lie
  exactly where the conservative term pushes Q down, and backing up from them made every value of
  a Lift run negative although no reward is (bench/robosuite_lift/README.md).
- AdamW for every network, gradient norms clipped to ``grad_clip``.
- Images: each batch's views are randomly shifted (``image_shift_pixels``). One ResNet-10 encodes the
  views for both Q-heads and is trained by the critic loss only; the actor uses that same encoder
  (the module is shared, so the exported actor carries the critic's current encoder) on detached
  features. This is SERL's / DrQ's arrangement: the critic's TD signal is the denser one for
  learning visual features, the actor's gradient through a shared encoder would pull it towards
  whatever maximizes a still-wrong Q, and one encoder instead of two halves the image compute.

The learner needs no ROS: a trainer node or a simulator benchmark feeds it batches
(:mod:`pld_ros.learning.replay_buffer`). For RLPD without a residual, give it zero base actions and
an actor config whose ``residual_scale`` is 1: the actor then outputs the whole action.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.profiler import record_function

from pld_ros.core.observation import ACTION_DIM
from pld_ros.learning.augmentation import random_shift
from pld_ros.learning.checkpoint import load_checkpoint, read_scalars, save_checkpoint
from pld_ros.learning.critic import Critic
from pld_ros.learning.replay_buffer import TransitionBatch
from pld_ros.models.residual_actor import ResidualActor, ResidualActorConfig, actor_weights, squashed_sample
from pld_ros.profile import Trainer


def resolve_device(device: str) -> torch.device:
    """The torch device of ``Trainer.device`` ("auto": CUDA when there is one)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def onthefly_value(q_values: torch.Tensor, log_prob: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """``[B]`` value of the next observation from the target Q values ``[NUM_Q, N, B]`` of ``N``
    sampled residuals: the max over the samples of the min over the Q-networks, each sample's
    ``- temperature * log_prob`` (``[N, B]``) added first when ``log_prob`` is given."""
    value = q_values.min(dim=0).values
    if log_prob is not None:
        value = value - temperature * log_prob
    return value.max(dim=0).values


def calql_regularizer(
    q_data: torch.Tensor,
    q_random: torch.Tensor,
    q_policy: torch.Tensor,
    log_prob_policy: torch.Tensor,
    mc_return: torch.Tensor | None,
) -> torch.Tensor:
    """Cal-QL's conservative term, summed over the Q-networks, averaged over the batch.

    ``q_data`` ``[NUM_Q, B]``: Q of the stored residuals. ``q_random`` ``[NUM_Q, N, B]``: Q of
    residuals drawn uniformly from ``[-1, 1]^A`` (density ``2^-A``). ``q_policy`` ``[NUM_Q, N, B]``
    and ``log_prob_policy`` ``[N, B]``: residuals from the actor. ``mc_return`` ``[B]`` lower-bounds
    the actor's Q values (Cal-QL); None gives CQL's term.
    """
    if mc_return is not None:
        q_policy = torch.maximum(q_policy, mc_return)
    weighted = torch.cat([q_random + ACTION_DIM * math.log(2.0), q_policy - log_prob_policy], dim=1)
    return (torch.logsumexp(weighted, dim=1) - q_data).mean(dim=1).sum()


def _clip_and_step(optimizer: torch.optim.Optimizer, parameters: list[nn.Parameter], clip: float) -> float:
    norm = float(nn.utils.clip_grad_norm_(parameters, clip))
    optimizer.step()
    return norm


class ResidualSAC:
    """The learner (see the module docstring).

    ``config``: the profile's trainer section. ``actor``: the residual actor's config (views, state,
    widths, residual scale). ``device``: overrides ``config.device``.
    """

    def __init__(
        self, config: Trainer, actor: ResidualActorConfig, device: torch.device | str | None = None
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device) if device is None else torch.device(device)
        self.critic = Critic(actor, config.critic_hidden_dim, config.critic_num_layers)
        if self.critic.encoder is not None and config.encoder_weights is not None:
            self.critic.encoder.load_state_dict(load_file(str(config.encoder_weights)))
        self.actor = ResidualActor(actor)
        if self.critic.encoder is not None:
            self.actor.encoder = self.critic.encoder
        self.critic.to(self.device)
        self.actor.to(self.device)
        self.target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_temperature = torch.tensor(
            math.log(config.initial_temperature), device=self.device, requires_grad=True
        )
        self.target_entropy = -float(ACTION_DIM) if config.target_entropy is None else config.target_entropy
        self._actor_parameters = [p for n, p in self.actor.named_parameters() if not n.startswith("encoder.")]
        self._critic_parameters = list(self.critic.parameters())
        self.actor_optimizer = torch.optim.AdamW(
            self._actor_parameters, lr=config.actor_lr, weight_decay=config.weight_decay
        )
        self.critic_optimizer = torch.optim.AdamW(
            self._critic_parameters, lr=config.critic_lr, weight_decay=config.weight_decay
        )
        self.temperature_optimizer = torch.optim.AdamW(
            [self.log_temperature], lr=config.actor_lr, weight_decay=0.0
        )
        self.updates = 0
        """Online updates (critic steps) so far; the xi schedule and the exported weights read it."""
        self.pretrain_updates = 0
        """Cal-QL pretraining steps so far."""

    @property
    def temperature(self) -> float:
        return float(self.log_temperature.detach().exp())

    # -- updates -------------------------------------------------------------------------------

    def update(self, batch: TransitionBatch) -> dict[str, float]:
        """One online critic step, and an actor and temperature step every ``critic_actor_ratio``-th
        call. Metrics: critic_loss, q_mean, target_mean, critic_grad_norm, temperature; on actor
        steps also actor_loss, entropy, actor_grad_norm."""
        batch = batch.to(self.device)
        features, metrics = self._critic_step(batch, pretraining=False)
        self.updates += 1
        if self.updates % self.config.critic_actor_ratio == 0:
            with record_function("sac/actor"):
                metrics |= self._actor_step(batch, features)
        metrics["temperature"] = self.temperature
        return metrics

    def pretrain_step(self, batch: TransitionBatch) -> dict[str, float]:
        """One Cal-QL critic step on an offline batch (the actor is not trained). Metrics as
        :meth:`update`'s critic part, plus calql_loss when ``cql_alpha`` > 0."""
        batch = batch.to(self.device)
        _, metrics = self._critic_step(batch, pretraining=True)
        self.pretrain_updates += 1
        return metrics

    def _views(self, batch: TransitionBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if batch.images is None or batch.next_images is None:
            return None, None
        pad = self.config.image_shift_pixels
        return random_shift(batch.images, pad), random_shift(batch.next_images, pad)

    def _critic_step(
        self, batch: TransitionBatch, pretraining: bool
    ) -> tuple[torch.Tensor, dict[str, float]]:
        # The record_function labels name the phases in a torch profile
        # (bench/learner_throughput.py); without a profiler they cost next to nothing.
        with record_function("sac/augment"):
            images, next_images = self._views(batch)
        with torch.no_grad(), record_function("sac/target"):
            target = self._target(batch, next_images, greedy=not pretraining)
        with record_function("sac/critic_forward"):
            features = self.critic.features(images, batch.state)
            q = self.critic.q_values(features, batch.base_action, batch.residual)
        td_loss = ((q - target) ** 2).mean(dim=1).sum()
        loss = td_loss
        metrics = {
            "critic_loss": float(td_loss.detach()),
            "q_mean": float(q.detach().mean()),
            "target_mean": float(target.mean()),
        }
        if pretraining and self.config.cql_alpha > 0.0:
            with record_function("sac/calql"):
                calql = self._calql_term(features, batch, q)
            loss = loss + self.config.cql_alpha * calql
            metrics["calql_loss"] = float(calql.detach())
        with record_function("sac/critic_backward"):
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            metrics["critic_grad_norm"] = _clip_and_step(
                self.critic_optimizer, self._critic_parameters, self.config.grad_clip
            )
        with record_function("sac/target_update"):
            self._update_target()
        return features.detach(), metrics

    def _target(self, batch: TransitionBatch, next_images: torch.Tensor | None, greedy: bool) -> torch.Tensor:
        """``[B]`` the critic's target: the on-the-fly backup when ``greedy``, else the value of
        the actor's deterministic residual (the pretraining's; module docstring)."""
        actor_features = self.actor.features(next_images, batch.next_state)
        target_features = self.target.features(next_images, batch.next_state)
        mean, log_std = self.actor.head(actor_features, batch.next_base_action)
        discount = self.config.discount
        # n-step transitions: the bias of each step they span, the next value discounted by all.
        bias_steps = batch.steps if discount == 1.0 else (1.0 - discount**batch.steps) / (1.0 - discount)
        reward = batch.reward + self.config.reward_bias * bias_steps
        bootstrap = discount**batch.steps * (1.0 - batch.done)
        if not greedy:
            q_next = self.target.q_values(target_features, batch.next_base_action, torch.tanh(mean))
            return reward + bootstrap * q_next.min(dim=0).values
        samples, size = self.config.onthefly_samples, len(batch)
        residual, log_prob = squashed_sample(
            mean.expand(samples, *mean.shape), log_std.expand(samples, *log_std.shape)
        )
        q_next = self.target.q_values(
            target_features.expand(samples, *target_features.shape).reshape(samples * size, -1),
            batch.next_base_action.expand(samples, *batch.next_base_action.shape).reshape(samples * size, -1),
            residual.reshape(samples * size, -1),
        ).reshape(-1, samples, size)
        next_value = onthefly_value(
            q_next, log_prob if self.config.backup_entropy else None, self.temperature
        )
        return reward + bootstrap * next_value

    def _calql_term(
        self, features: torch.Tensor, batch: TransitionBatch, q_data: torch.Tensor
    ) -> torch.Tensor:
        samples, size = self.config.cql_samples, len(batch)
        repeated = features.expand(samples, *features.shape).reshape(samples * size, -1)
        base = batch.base_action.expand(samples, *batch.base_action.shape).reshape(samples * size, -1)
        with torch.no_grad():
            mean, log_std = self.actor.head(features.detach(), batch.base_action)
            policy, log_prob = squashed_sample(
                mean.expand(samples, *mean.shape), log_std.expand(samples, *log_std.shape)
            )
        uniform = torch.rand(samples * size, ACTION_DIM, device=self.device) * 2.0 - 1.0
        q_random = self.critic.q_values(repeated, base, uniform).reshape(-1, samples, size)
        q_policy = self.critic.q_values(repeated, base, policy.reshape(samples * size, -1))
        return calql_regularizer(
            q_data, q_random, q_policy.reshape(-1, samples, size), log_prob, batch.mc_return
        )

    def _actor_step(self, batch: TransitionBatch, features: torch.Tensor) -> dict[str, float]:
        mean, log_std = self.actor.head(features, batch.base_action)
        residual, log_prob = squashed_sample(mean, log_std)
        # The critic is only evaluated here: no gradients into its weights.
        self.critic.requires_grad_(False)
        q = self.critic.q_values(features, batch.base_action, residual).min(dim=0).values
        self.critic.requires_grad_(True)
        actor_loss = (self.temperature * log_prob - q).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()  # type: ignore[no-untyped-call]
        grad_norm = _clip_and_step(self.actor_optimizer, self._actor_parameters, self.config.grad_clip)
        entropy = -log_prob.detach().mean()
        temperature_loss = self.log_temperature.exp() * (entropy - self.target_entropy)
        self.temperature_optimizer.zero_grad(set_to_none=True)
        temperature_loss.backward()  # type: ignore[no-untyped-call]
        self.temperature_optimizer.step()
        return {
            "actor_loss": float(actor_loss.detach()),
            "entropy": float(entropy),
            "actor_grad_norm": grad_norm,
        }

    def _update_target(self) -> None:
        rate = self.config.target_update_rate
        with torch.no_grad():
            online: list[torch.Tensor] = list(self.critic.parameters())
            target: list[torch.Tensor] = list(self.target.parameters())
            torch._foreach_lerp_(target, online, rate)

    # -- acting ----------------------------------------------------------------------------------

    def act(
        self,
        state: np.ndarray,
        base_action: np.ndarray,
        images: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> np.ndarray:
        """The residual in ``[-1, 1]`` (float32 ``[A]``, or ``[B, A]`` for batched inputs) for
        ``state`` ``[S]`` / ``[B, S]``, ``base_action`` and ``images`` (uint8, ``[V, H, W, 3]`` or
        batched): a sample, or ``tanh`` of the mean when ``deterministic``."""
        single = state.ndim == 1

        def tensor(array: np.ndarray) -> torch.Tensor:
            value = torch.as_tensor(array, device=self.device)
            return value[None] if single else value

        with torch.inference_mode():
            residual = self.actor.act(
                None if images is None else tensor(images),
                tensor(state.astype(np.float32, copy=False)),
                tensor(base_action.astype(np.float32, copy=False)),
                deterministic,
            )
        out: np.ndarray = residual.cpu().numpy()
        return out[0] if single else out

    # -- persistence -----------------------------------------------------------------------------

    def _parts(
        self,
    ) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer], dict[str, torch.Tensor]]:
        modules: dict[str, nn.Module] = {"actor": self.actor, "critic": self.critic, "target": self.target}
        optimizers: dict[str, torch.optim.Optimizer] = {
            "actor": self.actor_optimizer,
            "critic": self.critic_optimizer,
            "temperature": self.temperature_optimizer,
        }
        return modules, optimizers, {"log_temperature": self.log_temperature}

    def save(self, directory: Path) -> None:
        """Write the full learner state (networks, optimizers, temperature, update counts and the
        configs they belong to) to ``directory`` (see :mod:`pld_ros.learning.checkpoint`)."""
        scalars = {
            "updates": self.updates,
            "pretrain_updates": self.pretrain_updates,
            "actor_config": self.actor.config.to_json(),
            "trainer": self.config.model_dump(mode="json"),
        }
        save_checkpoint(directory, *self._parts(), scalars)

    def load(self, directory: Path) -> None:
        """Restore a state written by :meth:`save`. ValueError if it was saved for another actor
        config (the shapes would not fit); the trainer config may differ (e.g. a new learning rate
        after a restart), the optimizers' saved state wins for what they hold. FileNotFoundError
        when there is no checkpoint."""
        saved = ResidualActorConfig.from_json(read_scalars(directory)["actor_config"])
        if saved != self.actor.config:
            raise ValueError(f"checkpoint of another actor: {saved} != {self.actor.config}")
        scalars = load_checkpoint(directory, *self._parts())
        self.updates = int(scalars["updates"])
        self.pretrain_updates = int(scalars["pretrain_updates"])

    def actor_weights(self, version: int) -> bytes:
        """The actor's weights file for the robot
        (:func:`~pld_ros.models.residual_actor.actor_weights`), stamped with ``version`` and this
        learner's update count."""
        return actor_weights(self.actor, version=version, updates=self.updates)

    def export_actor(self, path: Path, version: int) -> None:
        """Write :meth:`actor_weights` to ``path``."""
        path.write_bytes(self.actor_weights(version))
