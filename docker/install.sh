#!/usr/bin/env bash
# The build steps both images share (docker/Dockerfile.robot and docker/Dockerfile.trainer), run
# by `docker build` as root on ros:<distro>-ros-base (Ubuntu 24.04 noble for Jazzy, Python 3.12):
#
#   install.sh system      Ubuntu packages beyond the base image
#   install.sh workspace   from the repository root: scripts/bootstrap.sh with the system ROS
#                          (PLD_SYSTEM_ROS=1: a venv with --system-site-packages, the pinned Python
#                          dependencies, colcon build of pld_msgs and pld_ros, the venv's ros2
#                          wrapper), and a smoke check of the result
#
# Environment of `workspace` (set by the Dockerfiles' build arguments):
#   PLD_TORCH_INDEX   an extra pip index for torch: https://download.pytorch.org/whl/cpu gives the
#                     CPU build (its 2.x.y+cpu outranks PyPI's 2.x.y for the pin torch==2.x.y);
#                     empty: PyPI's build, which on Linux x86_64 is the CUDA one (with the CUDA
#                     runtime, cuBLAS and cuDNN as nvidia-* wheels)
#   PLD_ONNXRUNTIME   onnxruntime or onnxruntime-gpu, read by scripts/bootstrap.sh: it would pick
#                     by asking nvidia-smi, which no GPU answers during `docker build`
#   PLD_EXPECT_CUDA   1: fail unless torch is a CUDA build and onnxruntime has its CUDA provider
#
# PEP 668: noble's system Python is externally managed, so nothing here runs the system pip;
# every Python package goes into the venv (.venv).
set -euo pipefail

step="${1:?usage: install.sh system|workspace}"
distro="${ROS_DISTRO:?ROS_DISTRO is not set (the ros:<distro> images set it)}"

system_packages() {
  # python3-venv: noble's python3 has no ensurepip without it. python3-dev: rosidl_generator_py
  # compiles pld_msgs' Python bindings against the interpreter's headers. libusb-1.0-0: pyrealsense2.
  # libegl1, libopengl0, libgl1 and libgl1-mesa-dri (Mesa's llvmpipe): MuJoCo's offscreen
  # rendering with MUJOCO_GL=egl on the CPU; scripts/system_deps.sh only looks for libEGL.so.1, so
  # the driver is named here. The ROS packages are in ros-base already (ros_core and ros_base
  # variants); they are listed because pld_ros needs them (package.xml), not for the base's sake.
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    python3-venv python3-dev \
    libusb-1.0-0 libegl1 libopengl0 libgl1 libgl1-mesa-dri \
    "ros-$distro-launch-ros" "ros-$distro-robot-state-publisher" \
    "ros-$distro-diagnostic-msgs" "ros-$distro-std-srvs" "ros-$distro-sensor-msgs"
  rm -rf /var/lib/apt/lists/*
}

workspace() {
  export PLD_SYSTEM_ROS=1
  # The ROS setup scripts read unset variables.
  set +u
  # shellcheck disable=SC1090
  source "/opt/ros/$distro/setup.bash"
  set -u
  if [ -n "${PLD_TORCH_INDEX:-}" ]; then
    export PIP_EXTRA_INDEX_URL="$PLD_TORCH_INDEX"
  fi
  bash scripts/bootstrap.sh

  # Fail the build, not the first run: what the launch files and the nodes import, and the launch
  # files where `ros2 launch` looks for them.
  set +u
  # shellcheck disable=SC1091
  source scripts/env.sh
  set -u
  python - <<'EOF'
import os

import onnxruntime
import torch

import launch_ros  # noqa: F401
import pld_msgs.msg  # noqa: F401
import pld_ros.launch_description  # noqa: F401
import rclpy  # noqa: F401

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), onnxruntime providers {onnxruntime.get_available_providers()}")
if os.environ.get("PLD_EXPECT_CUDA") == "1":
    assert torch.version.cuda, "torch is not a CUDA build"
    assert "CUDAExecutionProvider" in onnxruntime.get_available_providers(), "onnxruntime has no CUDA provider"
EOF
  local share
  share="$(ros2 pkg prefix pld_ros)/share/pld_ros"
  for launch_file in launch/*.launch.py; do
    test -e "$share/$launch_file" || { echo "install.sh: $share/$launch_file is not installed" >&2; exit 1; }
  done
}

case "$step" in
  system) system_packages ;;
  workspace) workspace ;;
  *) echo "install.sh: unknown step '$step' (system or workspace)" >&2; exit 2 ;;
esac
