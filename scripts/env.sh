# Source this to work in the project's environment: the venv, the ROS 2 wheels' libraries and the
# colcon workspace. `scripts/in_env.sh CMD` runs one command in it.
#
# With a system ROS 2 (ROS_DISTRO set, /opt/ros/<distro>/setup.bash sourced beforehand), the venv
# sees the system's rclpy through --system-site-packages and the wheel-specific steps are skipped.

PLD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PLD_VENV="${PLD_VENV:-$PLD_ROOT/.venv}"
export PLD_ROOT PLD_VENV

# shellcheck disable=SC1091
source "$PLD_VENV/bin/activate"

if [ -z "${ROS_DISTRO:-}" ] || [ "${PLD_SYSTEM_ROS:-0}" != 1 ]; then
  # The wheels re-execute every Python process once to set LD_LIBRARY_PATH. Setting it here,
  # with the guard variable, avoids the re-exec (it breaks signal timing and doubles start-up).
  if [ -z "${_ROS_WHEELS_BOOTSTRAP_COMPLETE:-}" ]; then
    LD_LIBRARY_PATH="$(_ROS_WHEELS_BOOTSTRAP_COMPLETE=1 python -c \
      'from ros_wheels_bootstrapper import get_ros_paths; print(get_ros_paths())')"
    export LD_LIBRARY_PATH _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
  fi
  export CMAKE_PREFIX_PATH="$PLD_VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export AMENT_PREFIX_PATH="$PLD_VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
fi

if [ -f "$PLD_ROOT/install/setup.bash" ]; then
  # shellcheck disable=SC1091
  source "$PLD_ROOT/install/setup.bash"
fi
export PLD_CONFIG_DIR="${PLD_CONFIG_DIR:-$PLD_ROOT/config}"
# Offscreen rendering for the simulated worlds: EGL works headless on the CPU (Mesa llvmpipe).
# Whichever module imports mujoco first fixes the backend, so it is set for every process here.
export MUJOCO_GL="${MUJOCO_GL:-egl}"
