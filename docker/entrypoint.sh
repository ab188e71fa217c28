#!/usr/bin/env bash
# Enter the image's environment: the system ROS 2, then the project's venv and workspace
# (scripts/env.sh with PLD_SYSTEM_ROS=1), then run the command, e.g. `ros2 launch ...` or `pld ...`.
set -e
# The ROS and colcon setup scripts read unset variables: no `set -u` here.
# shellcheck disable=SC1090
source "/opt/ros/${ROS_DISTRO:?}/setup.bash"
export PLD_SYSTEM_ROS=1
# shellcheck disable=SC1091
source /opt/pld-ros/scripts/env.sh
exec "$@"
