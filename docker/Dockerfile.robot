# The robot-side image: the official ROS 2 Jazzy base, pld-ros's Python dependencies in a venv
# that sees the system's ROS (PLD_SYSTEM_ROS=1), and the workspace built with colcon. Launch
# files run here with `ros2 launch`, e.g.:
#   docker build -f docker/Dockerfile.robot -t pld-ros-robot .
#   docker run --rm -it --network host pld-ros-robot \
#     ros2 launch pld_ros franka_pick_cube.launch.py sim:=true
FROM ros:jazzy-ros-base

RUN apt-get update && apt-get install -y --no-install-recommends \
        python3-venv python3-pip libusb-1.0-0 libegl1 libgl1 \
        ros-jazzy-launch-ros ros-jazzy-robot-state-publisher ros-jazzy-diagnostic-msgs ros-jazzy-std-srvs \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/pld-ros
COPY . .
SHELL ["/bin/bash", "-c"]
RUN source /opt/ros/jazzy/setup.bash && PLD_SYSTEM_ROS=1 bash scripts/bootstrap.sh

COPY docker/entrypoint.sh /entrypoint.sh
ENTRYPOINT ["/entrypoint.sh"]
CMD ["bash"]
