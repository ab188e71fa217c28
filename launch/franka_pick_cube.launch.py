"""`ros2 launch pld_ros franka_pick_cube.launch.py [sim:=true] [profile:=NAME_OR_PATH]`.

The node graph comes from config/franka_pick_cube.yaml (or its simulated variant) through
pld_ros.graph, the same function `pld launch franka_pick_cube` uses.
"""

from pld_ros.launch_description import generate


def generate_launch_description():
    return generate("franka_pick_cube")
