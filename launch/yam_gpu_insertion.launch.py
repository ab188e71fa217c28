"""`ros2 launch pld_ros yam_gpu_insertion.launch.py [sim:=true] [profile:=NAME_OR_PATH]`.

The node graph comes from config/yam_gpu_insertion.yaml (or its simulated variant) through
pld_ros.graph, the same function `pld launch yam_gpu_insertion` uses.
"""

from pld_ros.launch_description import generate


def generate_launch_description():
    return generate("yam_gpu_insertion")
