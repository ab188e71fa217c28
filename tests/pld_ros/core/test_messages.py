from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pld_ros.core.messages import action_of, image_array, pose_of, proprio_of


def xyz(x: float, y: float, z: float) -> SimpleNamespace:
    return SimpleNamespace(x=x, y=y, z=z)


def test_state_and_command_read_into_the_core_layouts() -> None:
    # Stand-ins with the messages' attributes: rclpy's and rosbags' classes are read the same way.
    pose = SimpleNamespace(
        position=xyz(0.1, 0.2, 0.3), orientation=SimpleNamespace(x=0.0, y=0.0, z=0.0, w=1.0)
    )
    state = SimpleNamespace(ee_pose=pose, gripper_closure=0.25)
    np.testing.assert_allclose(proprio_of(state), [0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 1.0, 0.25], rtol=1e-6)
    command = SimpleNamespace(translation=xyz(1, 2, 3), rotation=xyz(4, 5, 6), gripper=0.5)
    assert action_of(command).tolist() == [1, 2, 3, 4, 5, 6, 0.5]
    zero = SimpleNamespace(position=xyz(0, 0, 0), orientation=SimpleNamespace(x=0.0, y=0.0, z=0.0, w=0.0))
    with pytest.raises(ValueError, match="not a rotation"):
        pose_of(zero)


@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes", "numpy"])
def test_an_image_is_read_past_its_row_padding_and_bad_sizes_are_refused(as_bytes: bool) -> None:
    height, width, step = 2, 3, 12  # 3 bytes of padding per row
    rows = np.arange(height * step, dtype=np.uint8).reshape(height, step)
    # rclpy's messages hold bytes-like data, rosbags' a numpy array.
    data: object = rows.tobytes() if as_bytes else rows.reshape(-1)
    message = SimpleNamespace(encoding="rgb8", height=height, width=width, step=step, data=data)
    image = image_array(message)
    assert image.shape == (2, 3, 3)
    assert np.array_equal(image.reshape(height, -1), rows[:, :9])
    with pytest.raises(ValueError, match="rgb8"):
        image_array(SimpleNamespace(**{**message.__dict__, "encoding": "bgr8"}))
    with pytest.raises(ValueError, match="does not fit"):
        image_array(SimpleNamespace(**{**message.__dict__, "height": 3}))
