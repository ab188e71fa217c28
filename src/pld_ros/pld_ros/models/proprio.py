"""What a network makes of the proprioception vector (:mod:`pld_ros.core.observation`).

The orientation enters as the first two columns of its rotation matrix, not as the quaternion:
with the hand pointing down ``qw`` is about 0, so the ``qw >= 0`` convention of the proprio vector
flips the quaternion's sign from tick to tick, while the matrix is the same for both signs and
continuous in the rotation.
"""

import torch

PROPRIO_FEATURE_DIM = 10
"""Position (3), rotation matrix x and y columns (6), gripper closure (1)."""


def proprio_features(proprio: torch.Tensor) -> torch.Tensor:
    """``[B, 8]`` proprio -> ``[B, PROPRIO_FEATURE_DIM]``.

    Quadratic in the quaternion, so both signs of one rotation give the same features.
    """
    x, y, z, w = proprio[:, 3], proprio[:, 4], proprio[:, 5], proprio[:, 6]
    columns = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y + z * w),
            2 * (x * z - y * w),
            2 * (x * y - z * w),
            1 - 2 * (x * x + z * z),
            2 * (y * z + x * w),
        ],
        dim=1,
    )
    return torch.cat([proprio[:, :3], columns, proprio[:, 7:8]], dim=1)
