"""Synthetic SFT episodes for the dataset tests and the conversion benchmark, and image comparison.

Each camera frame is a smooth pattern (products of sinusoids, which lossy video keeps well) that moves
from frame to frame and differs per episode and camera, so a decoded frame is much closer to its
own original than to any other frame: a frame shifted by one, or from another episode, shows.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pld_ros.data.sft_episode import ACTION_NAMES, STATE_NAMES, EpisodeInfo, Origin, SftEpisode

FPS = 20
TASKS = ("pick up the red cube", "put the cube in the bowl")


def frames(count: int, height: int, width: int, *, seed: float, start: int = 0) -> npt.NDArray[np.uint8]:
    """``[count, height, width, 3]`` moving patterns; ``seed`` sets phase and direction."""
    y = np.linspace(0.0, 1.0, height)[:, None]
    x = np.linspace(0.0, 1.0, width)[None, :]
    out = np.empty((count, height, width, 3), dtype=np.uint8)
    for index in range(count):
        t = (start + index) * 0.4 + seed
        # Mostly brightness, with milder and coarser colour: video keeps colour at half resolution.
        light = 100.0 * np.sin(2 * np.pi * (1.2 * x + 0.6 * y) + t) * np.cos(2 * np.pi * 0.5 * y - 0.5 * t)
        colour = [25.0 * np.sin(2 * np.pi * (0.5 * x - 0.3 * y) + 2.1 * c + seed - 0.3 * t) for c in range(3)]
        out[index] = np.clip(np.stack([127.5 + light + c for c in colour], axis=-1), 0, 255).astype(np.uint8)
    return out


def psnr(decoded: np.ndarray, original: np.ndarray) -> float:
    """Peak signal-to-noise ratio, dB, over the whole arrays."""
    mse = float(np.mean((decoded.astype(np.float64) - original.astype(np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * np.log10(255.0**2 / mse)


def episode(
    index: int,
    *,
    frames_count: int = 16,
    cameras: dict[str, tuple[int, int]] | None = None,
    success: bool = True,
    task: str | None = None,
    start_time: float = 1.75e9,
    origin: Origin = Origin.PLD,
) -> SftEpisode:
    """Episode ``index`` of a synthetic dataset: ``cameras`` maps names to (height, width)
    (default: wrist 64x64 and side 48x80), state ``[t, index, ...]`` identifies every frame, the
    residual is zero for the first third (probing) and small after."""
    rng = np.random.default_rng(index)
    cameras = {"wrist": (64, 64), "side": (48, 80)} if cameras is None else cameras
    state = rng.normal(size=(frames_count, len(STATE_NAMES))).astype(np.float32)
    state[:, 0] = np.arange(frames_count)
    state[:, 1] = index
    base = rng.uniform(-0.01, 0.01, (frames_count, len(ACTION_NAMES))).astype(np.float32)
    residual = rng.uniform(-0.005, 0.005, base.shape).astype(np.float32)
    residual[: frames_count // 3] = 0.0
    action = base + residual
    return SftEpisode(
        task=task if task is not None else TASKS[index % len(TASKS)],
        cameras={
            name: frames(frames_count, height, width, seed=index + 0.37 * camera)
            for camera, (name, (height, width)) in enumerate(cameras.items())
        },
        state=state,
        action=action,
        base_action=base,
        residual=action - base,
        timestamps=start_time + 10.0 * index + np.arange(frames_count, dtype=np.float64) / FPS,
        success=success,
        info=EpisodeInfo("fr3", origin, 100 + index, {"run_id": "test-run", "seed": str(index)}),
        state_names=STATE_NAMES,
        action_names=ACTION_NAMES,
    )
