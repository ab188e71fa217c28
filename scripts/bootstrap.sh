#!/usr/bin/env bash
# Set up everything pld-ros needs, from nothing, without root; safe to run again (it only redoes
# what changed). Steps:
#   0. Debian packages the Python wheels need at run time (scripts/system_deps.sh; root or sudo);
#   1. a venv at $PLD_VENV (default .venv) with the pinned dependencies (requirements/*.txt,
#      versions from requirements/constraints.txt): torch first, alone, so nothing pulls another
#      build; onnxruntime-gpu where an NVIDIA GPU answers, onnxruntime otherwise ($PLD_ONNXRUNTIME
#      overrides);
#   2. the ROS 2 wheels' CMake exports pointed at this interpreter (scripts/fix_ros_wheel_cmake.py);
#   3. `colcon build` of pld_msgs and pld_ros into build/ and install/.
# With a system ROS 2 sourced and PLD_SYSTEM_ROS=1, the venv uses the system's ROS instead of
# the wheels (see README), and $PLD_VENV/bin/ros2 runs the system's ros2 under the venv's python.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PLD_VENV:-$ROOT/.venv}"
PYTHON="${PLD_PYTHON:-python3}"
SYSTEM_ROS="${PLD_SYSTEM_ROS:-0}"
cd "$ROOT"
start=$(date +%s)

if [ "$SYSTEM_ROS" = 1 ] && [ -z "${ROS_DISTRO:-}" ]; then
  echo "bootstrap: PLD_SYSTEM_ROS=1 but no ROS 2 is sourced (source /opt/ros/<distro>/setup.bash)" >&2
  exit 1
fi

bash scripts/system_deps.sh

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating venv $VENV"
  if [ "$SYSTEM_ROS" = 1 ]; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# PLD_ONNXRUNTIME overrides the pick where nvidia-smi cannot answer (a GPU image during `docker build`).
if [ -n "${PLD_ONNXRUNTIME:-}" ]; then
  ORT="$PLD_ONNXRUNTIME"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  ORT=onnxruntime-gpu
else
  ORT=onnxruntime
fi
requirements=(-r requirements/runtime.txt -r requirements/dev.txt "$ORT")
[ "$SYSTEM_ROS" = 1 ] || requirements+=(-r requirements/ros.txt)

stamp="$VENV/.pld-bootstrap"
want="$( (cat requirements/*.txt scripts/bootstrap.sh; echo "$ORT $SYSTEM_ROS") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing dependencies"
  "${PIP[@]}" install -q -c requirements/constraints.txt torch
  "${PIP[@]}" install -q -c requirements/constraints.txt "${requirements[@]}"
  if [ "$SYSTEM_ROS" != 1 ]; then
    "$VENV/bin/python" scripts/fix_ros_wheel_cmake.py "$VENV"
  fi
  echo "$want" > "$stamp"
else
  echo "bootstrap: dependencies up to date"
fi

if [ "$SYSTEM_ROS" = 1 ]; then
  # The system's ros2 starts the system python3, which sees none of the venv, so `ros2 launch`
  # would fail importing pld_ros.launch_description (pydantic 2, numpy 2, ...). The venv's
  # interpreter sees the system's packages (--system-site-packages) and ROS through PYTHONPATH.
  cat >"$VENV/bin/ros2" <<EOF
#!/bin/sh
# ros2 under the pld-ros venv's interpreter (scripts/bootstrap.sh).
exec "$VENV/bin/python" "/opt/ros/$ROS_DISTRO/bin/ros2" "\$@"
EOF
  chmod 755 "$VENV/bin/ros2"
fi

# colcon's generated setup scripts read unset variables, so they are sourced without `set -u`.
set +u
# shellcheck disable=SC1091
source scripts/env.sh
set -u
echo "bootstrap: colcon build"
colcon build --base-paths src --symlink-install \
  --event-handlers console_cohesion+ \
  --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF
echo "bootstrap: done in $(( $(date +%s) - start )) s"
