from __future__ import annotations

import numpy as np
import torch

from pld_ros.core.observation import proprio_vector
from pld_ros.core.spatial import Pose, quat_to_matrix
from pld_ros.models.proprio import PROPRIO_FEATURE_DIM, proprio_features


def test_features_ignore_the_quaternion_sign() -> None:
    proprio = torch.tensor([[0.4, 0.1, 0.2, 0.92, 0.38, 0.02, 0.01, 0.5]])
    flipped = proprio.clone()
    flipped[:, 3:7] *= -1
    torch.testing.assert_close(proprio_features(proprio), proprio_features(flipped))


def test_features_are_position_rotation_columns_and_closure() -> None:
    pose = Pose.of((0.4, -0.1, 0.3), (0.9, 0.3, 0.1, 0.05))
    features = proprio_features(torch.from_numpy(proprio_vector(pose, 0.7))[None])[0].numpy()
    assert features.shape == (PROPRIO_FEATURE_DIM,)
    matrix = quat_to_matrix(pose.orientation)
    np.testing.assert_allclose(features[:3], pose.position, atol=1e-6)
    np.testing.assert_allclose(features[3:6], matrix[:, 0], atol=1e-6)
    np.testing.assert_allclose(features[6:9], matrix[:, 1], atol=1e-6)
    assert features[9] == np.float32(0.7)
