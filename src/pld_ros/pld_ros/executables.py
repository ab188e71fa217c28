"""The node executables pld_ros installs, and the module that implements each.

setup.py turns this table into console scripts (so ``ros2 run`` and launch files find them);
``pld launch`` runs the same modules directly where no ROS install exists. Keep this file free of
imports: setup.py executes it before the package is installed.
"""

NODE_EXECUTABLES = {
    "arm_driver": "pld_ros.nodes.arm_driver",
    "camera": "pld_ros.nodes.camera",
    "heartbeat": "pld_ros.nodes.heartbeat",
    "health_monitor": "pld_ros.nodes.health_monitor",
    "sim_world": "pld_ros.nodes.sim_world",
    "base_policy": "pld_ros.nodes.base_policy",
    "residual_policy": "pld_ros.nodes.residual_policy",
    "replay_buffer": "pld_ros.nodes.replay_buffer",
    "recorder": "pld_ros.nodes.recorder",
    "reward_classifier": "pld_ros.nodes.reward_classifier",
    "supervisor": "pld_ros.nodes.supervisor",
    "teleop": "pld_ros.nodes.teleop",
    "trainer": "pld_ros.nodes.trainer",
}
