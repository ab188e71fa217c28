from __future__ import annotations

import cv2
import numpy as np
import pytest

from pld_ros.core.image_view import PolicyViewer
from pld_ros.profile import PolicyView


def natural_image(height: int = 480, width: int = 640) -> np.ndarray:
    noise = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    return np.asarray(cv2.GaussianBlur(noise, (0, 0), 3), dtype=np.uint8)


def test_crop_then_resize_to_the_policy_view() -> None:
    frame = np.zeros((480, 640, 3), dtype=np.uint8)
    frame[:, 80:560] = (10, 200, 30)  # exactly the crop band
    view = PolicyViewer(PolicyView(width=128, height=128, crop=(80, 0, 480, 480)), 640, 480)(frame)
    assert view.shape == (128, 128, 3) and view.dtype == np.uint8
    assert (view == (10, 200, 30)).all(), "a pixel from outside the crop leaked in"


def test_two_step_shrink_stays_close_to_a_direct_area_resize() -> None:
    frame = natural_image()
    view = PolicyViewer(PolicyView(width=128, height=128, crop=(80, 0, 480, 480)), 640, 480)(frame)
    direct = cv2.resize(frame[:, 80:560], (128, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(view.astype(int) - direct).mean() < 1.0


def test_shrinking_does_not_alias() -> None:
    # A one-pixel checkerboard must average to grey, not turn into a coarser pattern.
    checker = ((np.indices((480, 480)).sum(axis=0) % 2) * 255).astype(np.uint8)
    frame = np.repeat(checker[:, :, None], 3, axis=2)
    view = PolicyViewer(PolicyView(width=128, height=128), 480, 480)(frame)
    assert abs(float(view.mean()) - 127.5) < 2.0
    assert float(view.std()) < 20.0


def test_enlarging_and_identity_work() -> None:
    frame = natural_image(64, 64)
    assert PolicyViewer(PolicyView(width=128, height=96), 64, 64)(frame).shape == (96, 128, 3)
    np.testing.assert_array_equal(PolicyViewer(PolicyView(width=64, height=64), 64, 64)(frame), frame)


def test_wrong_frame_size_and_oversized_crop_are_refused() -> None:
    viewer = PolicyViewer(PolicyView(width=128, height=128), 640, 480)
    with pytest.raises(ValueError, match="expected a 640x480 frame"):
        viewer(np.zeros((480, 600, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="exceeds the 640x480 image"):
        PolicyViewer(PolicyView(crop=(200, 0, 480, 480)), 640, 480)
