"""A scripted top-down pick through franky: what a perfect policy does in the franka_pick_cube world."""

from __future__ import annotations

import math
import time

import franky
import numpy as np

from pld_ros.core.spatial import FloatArray, quat_multiply

# The hand pointing straight down, fingers closing along the base's y axis (the FR3's home pose).
DOWN = np.array([1.0, 0.0, 0.0, 0.0])
PLANNER_ATTEMPTS = 3


def move_to(
    robot: franky.Robot, position: FloatArray | tuple[float, float, float], orientation: FloatArray
) -> None:
    """(blocking) Go to an absolute TCP pose in the base frame."""
    target = franky.Affine(list(position), list(orientation))
    for attempt in range(PLANNER_ATTEMPTS):
        try:
            robot.move(franky.CartesianMotion(target, franky.ReferenceType.Absolute))
            return
        except RuntimeError as exc:
            # On an overloaded machine the simulator's state stream jitters, and franky's planner
            # (ruckig) now and then rejects the start state it estimates from it ("Motion planner
            # failed with error code -111"). The motion has not started: planning again is safe.
            if "Motion planner failed" not in str(exc) or attempt == PLANNER_ATTEMPTS - 1:
                raise
            time.sleep(0.1)


def pick_up(robot: franky.Robot, gripper: franky.Gripper, x: float, y: float, yaw: float) -> None:
    """Open, descend onto the cube at (x, y) turned by ``yaw``, grasp it and lift it to 12 cm."""
    # Turned by the cube's yaw, the fingers close on two opposite faces.
    grasp = quat_multiply(np.array([0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)]), DOWN)
    gripper.move(0.08, 0.1)
    move_to(robot, (x, y, 0.15), grasp)
    move_to(robot, (x, y, 0.015), grasp)
    # franky-sim's fingers are position-servoed: closing towards 0 is what makes them squeeze.
    assert gripper.grasp(0.0, 0.1, 20.0, epsilon_inner=0.005, epsilon_outer=0.08), "nothing grasped"
    move_to(robot, (x, y, 0.12), grasp)
