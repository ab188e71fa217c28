"""Random-shift image augmentation (DrQ), as PLD / SERL apply it to the critic's and actor's views."""

from __future__ import annotations

import torch


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """``images`` (uint8 ``[B, V, H, W, 3]``) each shifted by up to ``pad`` pixels in each direction.

    Equivalent to padding every image by ``pad`` pixels (repeating its border) and cropping a random
    ``H x W`` window, drawn independently for every image of every view: the border is repeated by
    clamping the gather's indices, so no padded copy is made and the result stays uint8.
    """
    if pad == 0:
        return images
    batch, views, height, width = images.shape[:4]
    flat = images.reshape(batch * views, height, width, images.shape[4])
    count, device = flat.shape[0], images.device
    shifts = torch.randint(-pad, pad + 1, (count, 2), device=device)
    rows = (torch.arange(height, device=device)[None] + shifts[:, :1]).clamp(0, height - 1)
    cols = (torch.arange(width, device=device)[None] + shifts[:, 1:]).clamp(0, width - 1)
    index = torch.arange(count, device=device)[:, None, None]
    shifted = flat[index, rows[:, :, None], cols[:, None, :]]
    return shifted.reshape(images.shape)
