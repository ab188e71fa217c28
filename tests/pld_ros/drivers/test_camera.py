"""The frame value type every camera source delivers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pld_ros.drivers.camera import Frame


def test_a_frame_is_rgb8_and_its_pixels_cannot_be_changed() -> None:
    frame = Frame(rgb=np.zeros((4, 6, 3), dtype=np.uint8), timestamp=1.5, number=7)
    with pytest.raises(ValueError, match="read-only"):
        frame.rgb[0, 0, 0] = 1
    bad: list[Any] = [
        np.zeros((4, 6), np.uint8),
        np.zeros((4, 6, 4), np.uint8),
        np.zeros((4, 6, 3), np.float32),
    ]
    for rgb in bad:
        with pytest.raises(ValueError, match="H x W x 3 uint8"):
            Frame(rgb=rgb, timestamp=0.0, number=0)
