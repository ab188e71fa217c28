"""Simulated episodes for the training commands (``pld train``, ``pld reward collect``): the
franka_pick_cube world in this process (franky-sim bound to a loopback address), one episode per
seed, and a new world when the arm can no longer be reset.

What stops the episodes (a profile without that world, a world that does not start, too many
restarts) is raised as :class:`SimEpisodeError`; each command prints it with its own prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import typer

from pld_ros.drivers.arm import ArmFault
from pld_ros.profile import FrankyArm, Profile, ProfileError, load_profile
from pld_ros.sim.franka_pick_cube import FrankaPickCubeWorld
from pld_ros.training.rollouts import Episode, Policy, SimRollouts, rollout_config

MAX_RESTARTS = 10
"""World restarts :func:`run_sim_episodes` tolerates before it gives up."""


class SimEpisodeError(Exception):
    """The simulated episodes cannot run; the message says why (the profile, the world, the fault)."""


def sim_profile(name: str) -> tuple[Profile, FrankyArm, tuple[str, ...]]:
    """The simulated variant of profile ``name`` (a name or a path), its Franka arm and the base
    policy's views. :class:`SimEpisodeError` unless it is valid, hosts the franka_pick_cube world,
    and has one Franka arm and a policies section."""
    try:
        profile = load_profile(name, sim=True)
    except ProfileError as exc:
        raise SimEpisodeError(str(exc)) from None
    if profile.simulation is None or profile.simulation.world != "franka_pick_cube":
        raise SimEpisodeError(f"{name}: the simulated variant does not host the franka_pick_cube world")
    arms = [arm for arm in profile.arms.values() if isinstance(arm, FrankyArm)]
    if len(arms) != 1 or profile.policies is None:
        raise SimEpisodeError(f"{name}: expected one Franka arm and a policies section")
    return profile, arms[0], profile.policies.base.views


@contextmanager
def _rollouts(
    profile_name: str, host: str, seed: int, success_ticks: int | None = None
) -> Iterator[SimRollouts]:
    profile, arm, views = sim_profile(profile_name)
    config = rollout_config(profile)
    if success_ticks is not None:
        config = replace(config, success_ticks=success_ticks)
    assert profile.simulation is not None and profile.policies is not None
    world = FrankaPickCubeWorld(
        host,
        render_width=profile.simulation.render_width,
        render_height=profile.simulation.render_height,
        seed=seed,
    )
    try:
        world.start()
    except OSError as exc:
        raise SimEpisodeError(str(exc)) from None
    try:
        with SimRollouts(
            world, arm, views, config, prompt=profile.policies.base.prompt, log=typer.echo
        ) as rollouts:
            yield rollouts
    finally:
        world.stop()


def run_sim_episodes(
    profile_name: str,
    host: str,
    seed: int,
    seeds: list[int],
    policy_for: Callable[[SimRollouts, int], Policy],
    on_episode: Callable[[int, Episode], None],
    success_ticks: int | None = None,
    done: Callable[[], bool] = lambda: False,
) -> None:
    """One episode per seed until the seeds run out or ``done()``, in a world started anew when
    the arm cannot be reset (franky-sim's arm can end up where the planner refuses every motion);
    an episode lost that way is retried.

    ``profile_name``: see :func:`sim_profile`; ``host``: the loopback address franky-sim binds;
    ``seed``: the world's seed (plus 1000 per restart); ``policy_for(rollouts, seed)``: who acts in
    the episode of ``seed``; ``on_episode(seed, episode)``: called after each; ``success_ticks``:
    consecutive success ticks that end an episode (None: the profile's). Progress goes to stdout.
    Raises :class:`SimEpisodeError` (profile, world start, more than :data:`MAX_RESTARTS`)."""
    pending = list(seeds)
    restarts = 0
    while pending and not done():
        with _rollouts(profile_name, host, seed + 1000 * restarts, success_ticks) as rollouts:
            try:
                while pending and not done():
                    on_episode(pending[0], rollouts.run_episode(policy_for(rollouts, pending[0]), pending[0]))
                    pending.pop(0)
            except ArmFault as fault:
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise SimEpisodeError(f"giving up after {MAX_RESTARTS} world restarts: {fault}") from None
                typer.echo(f"the arm cannot be reset ({fault}): restarting the world")
