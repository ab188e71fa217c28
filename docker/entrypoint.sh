#!/usr/bin/env bash
# Enter the image's environment: system ROS 2, then the project's venv and workspace.
set -e
# shellcheck disable=SC1091
source /opt/ros/jazzy/setup.bash
export PLD_SYSTEM_ROS=1
# shellcheck disable=SC1091
source /opt/pld-ros/scripts/env.sh
exec "$@"
