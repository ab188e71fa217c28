#!/usr/bin/env bash
# `make docker-test`: build the robot image (docker/Dockerfile.robot) and run each launch file for
# real inside it, on its simulated profile (no hardware, no GPU): docker/graph_check.sh starts
# `ros2 launch pld_ros <file> sim:=true` and checks that the graph comes up and stops cleanly.
# Needs a Docker daemon with BuildKit (Docker 23 or newer). Each launch file runs in a container of
# its own on Docker's default bridge network, so no other ROS graph on the host is seen or disturbed.
#
# Environment:
#   PLD_DOCKER_IMAGE         tag to build and run (default pld-ros-robot:test)
#   PLD_DOCKER_TEST_SECONDS  how long each graph keeps running once it is up (default 30)
#   PLD_DOCKER_TEST_LAUNCH   launch files to run (default: every launch/*.launch.py)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${PLD_DOCKER_IMAGE:-pld-ros-robot:test}"
RUN_SECONDS="${PLD_DOCKER_TEST_SECONDS:-30}"
if [ -n "${PLD_DOCKER_TEST_LAUNCH:-}" ]; then
  read -r -a launch_files <<<"$PLD_DOCKER_TEST_LAUNCH"
else
  launch_files=()
  for path in "$ROOT"/launch/*.launch.py; do launch_files+=("$(basename "$path")"); done
fi

if ! docker info >/dev/null 2>&1; then
  echo "docker-test: no Docker daemon answers ('docker info' failed); see docs/docker.md" >&2
  exit 1
fi

start=$(date +%s)
docker build -f "$ROOT/docker/Dockerfile.robot" -t "$IMAGE" "$ROOT"

failed=()
for launch_file in "${launch_files[@]}"; do
  echo "docker-test: $launch_file"
  # --shm-size: config/fastdds_shm.xml gives every participant (each node, ros2 launch, the ros2
  # daemon and CLI) a 16 MiB shared-memory segment; Docker's default /dev/shm is 64 MiB.
  if ! docker run --rm --shm-size 1g \
      -e FASTRTPS_DEFAULT_PROFILES_FILE=/opt/pld-ros/config/fastdds_shm.xml \
      -e ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST \
      "$IMAGE" /opt/pld-ros/docker/graph_check.sh "$launch_file" "$RUN_SECONDS"; then
    failed+=("$launch_file")
  fi
done

echo "docker-test: $(( ${#launch_files[@]} - ${#failed[@]} )) passed, ${#failed[@]} failed ($(( $(date +%s) - start )) s)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "docker-test: failed: ${failed[*]}" >&2
  exit 1
fi
