"""Stage 2 of PLD, data collection: a trained Stage 1 specialist collects successful episodes.

Each episode runs the base policy for k ~ U[0, K] steps and then lets the residual take over
(``probe_takeover``), with the specialist's weights fixed: no warm-up, no trainer in the graph.
The run stops after a target count of successes. Every episode is still stored (replay buffer,
and bags when recording is on) with its outcome, so failures stay available for diagnosis; the
successful ones become the SFT data (``pld dataset convert ... --filter success``).

A collection run is the robot's own profile plus a small overlay that ``extends`` it, written next
to the run logs: the profile stays the one source of truth, and the overlay records exactly what
the run changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pld_ros.core.atomic_file import atomic_write
from pld_ros.profile import Profile, ProfileError, load_profile


def collection_overlay(
    profile_path: Path, weights: Path, successes: int, max_probe_steps: int | None = None
) -> dict[str, Any]:
    """The overlay of a collection run on the profile at ``profile_path`` (see the module doc)."""
    if successes < 1:
        raise ValueError(f"successes must be at least 1, got {successes}")
    if not weights.is_file():
        raise ProfileError(f"specialist weights {weights} do not exist (a Stage 1 trainer's weights file)")
    residual: dict[str, Any] = {"weights": str(weights.resolve())}
    if max_probe_steps is not None:
        residual["max_probe_steps"] = max_probe_steps
    return {
        "extends": str(profile_path.resolve()),
        "supervisor": {"mode": "probe_takeover", "warmup_episodes": 0, "episodes": 0, "successes": successes},
        "policies": {"residual": residual},
        "trainer": {"in_graph": False},
    }


def write_collection_profile(
    profile_path: Path,
    weights: Path,
    successes: int,
    directory: Path,
    name: str,
    max_probe_steps: int | None = None,
) -> tuple[Path, Profile]:
    """Write the overlay as ``directory/name.yaml`` and return its path and the validated profile
    it gives; ProfileError, and no file left behind, when that profile is invalid."""
    overlay = collection_overlay(profile_path, weights, successes, max_probe_steps)
    path = directory / f"{name}.yaml"
    text = yaml.safe_dump(overlay, sort_keys=False)
    atomic_write(path, lambda out: out.write(text.encode()))
    try:
        return path, load_profile(path)
    except ProfileError:
        path.unlink()
        raise
