# syntax=docker/dockerfile:1
# The robot-side image: the official ROS 2 Jazzy image (Ubuntu 24.04 noble, Python 3.12) with
# pld-ros's Python dependencies in a venv that sees the system's ROS (PLD_SYSTEM_ROS=1) and the
# workspace (pld_msgs, pld_ros) built with colcon, so the launch files run with `ros2 launch`.
# From the repository root (docs/docker.md):
#   docker build -f docker/Dockerfile.robot -t pld-ros-robot .
#   docker run --rm -it --network host --ipc host pld-ros-robot \
#     ros2 launch pld_ros franka_pick_cube.launch.py sim:=true
FROM ros:jazzy-ros-base

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Ubuntu packages first, from the one script they need, so that a change to the tree does not
# invalidate this layer.
COPY docker/install.sh /tmp/pld-install.sh
RUN bash /tmp/pld-install.sh system && rm /tmp/pld-install.sh

WORKDIR /opt/pld-ros
COPY . .

# torch's CPU build: the robot runs the residual actor (a small MLP) and the policies through
# onnxruntime on the CPU; PyPI's default Linux torch is the CUDA build, several GB larger.
# Build with --build-arg PLD_TORCH_INDEX= for that one.
ARG PLD_TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The pip cache survives between builds (BuildKit), so a changed source file does not download
# every wheel again.
RUN --mount=type=cache,target=/root/.cache/pip \
    PLD_TORCH_INDEX="$PLD_TORCH_INDEX" PLD_ONNXRUNTIME=onnxruntime bash docker/install.sh workspace

# `docker stop` is a Ctrl-C: ros2 launch stops the nodes as on a terminal (the supervisor ends
# its episode as aborted and writes the run's summary).
STOPSIGNAL SIGINT
ENTRYPOINT ["/opt/pld-ros/docker/entrypoint.sh"]
CMD ["bash"]
