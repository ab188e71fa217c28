from __future__ import annotations

import torch

from pld_ros.learning.augmentation import random_shift


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` [H, W, 3] shifted by (dy, dx) with its border repeated (the reference)."""
    height, width = image.shape[:2]
    rows = (torch.arange(height) + dy).clamp(0, height - 1)
    cols = (torch.arange(width) + dx).clamp(0, width - 1)
    return image[rows][:, cols]


def test_every_image_is_a_border_repeating_shift_within_the_padding_drawn_independently() -> None:
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 2, 12, 12, 3), dtype=torch.uint8)
    out = random_shift(images, pad=2)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    found = set()
    for b in range(16):
        for v in range(2):
            matches = [
                (dy, dx)
                for dy in range(-2, 3)
                for dx in range(-2, 3)
                if torch.equal(out[b, v], shifted(images[b, v], dy, dx))
            ]
            assert matches, f"image {b}, view {v} is not a shift within 2 pixels"
            found.add(matches[0])
    assert len(found) > 5, "the shifts are not drawn per image"


def test_no_padding_leaves_the_images_alone() -> None:
    images = torch.randint(0, 256, (2, 1, 8, 8, 3), dtype=torch.uint8)
    assert random_shift(images, pad=0) is images
