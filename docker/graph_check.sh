#!/usr/bin/env bash
# Inside the robot image (docker/test.sh runs it): `ros2 launch pld_ros LAUNCH_FILE sim:=true`,
# then check that the graph comes up as its profile says, runs, and stops cleanly on Ctrl-C:
#   1. every node of the profile's graph (pld_ros.graph, what the launch file starts) is listed by
#      `ros2 node list` within STARTUP_SECONDS;
#   2. a heartbeat and the supervisor's episode status (a pld_msgs type) arrive through `ros2 topic
#      echo`, so ros2cli decodes the workspace's messages and episodes are running;
#   3. the graph still runs after SECONDS more (no required node exited);
#   4. after SIGINT ros2 launch ends within 30 s, no node died and no traceback was logged.
# Usage: graph_check.sh LAUNCH_FILE [SECONDS]
set -euo pipefail

launch_file="${1:?usage: graph_check.sh LAUNCH_FILE [SECONDS]}"
run_seconds="${2:-30}"
STARTUP_SECONDS=180  # MuJoCo, the renderers and the policies load on a slow CPU
profile="${launch_file%.launch.py}"
log="$(mktemp)"
launch_pid=""

fail() {
  echo "graph_check: $launch_file: FAILED: $*" >&2
  echo "--- ros2 launch log, last 100 lines:" >&2
  tail -n 100 "$log" >&2
  if [ -n "$launch_pid" ]; then kill -INT "$launch_pid" 2>/dev/null || true; fi
  exit 1
}

# The expectations come from the same graph the launch file builds: the heartbeat topic, the
# supervisor's status topic, then the nodes' fully qualified names.
mapfile -t expected < <(python - "$profile" <<'EOF'
import sys

from pld_ros.graph import HEARTBEAT_TOPIC, build_graph
from pld_ros.profile import load_profile, resolve_profile_path

path = resolve_profile_path(sys.argv[1], sim=True)
graph = build_graph(load_profile(path, sim=True), path)
namespace = graph.node("supervisor").namespace.strip("/")
print(HEARTBEAT_TOPIC)
print(f"/{namespace}/episode/status" if namespace else "/episode/status")
for spec in graph.nodes:
    print(spec.fully_qualified_name)
EOF
)
[ ${#expected[@]} -gt 2 ] || fail "could not compute the graph of profile $profile"
heartbeat_topic="${expected[0]}"
status_topic="${expected[1]}"
nodes=("${expected[@]:2}")

ros2 launch pld_ros "$launch_file" sim:=true >"$log" 2>&1 &
launch_pid=$!

deadline=$((SECONDS + STARTUP_SECONDS))
while :; do
  kill -0 "$launch_pid" 2>/dev/null || fail "ros2 launch ended before the graph was up"
  running="$(ros2 node list 2>/dev/null || true)"
  missing=()
  for node in "${nodes[@]}"; do
    grep -qxF "$node" <<<"$running" || missing+=("$node")
  done
  [ ${#missing[@]} -eq 0 ] && break
  [ "$SECONDS" -lt "$deadline" ] || fail "not up after $STARTUP_SECONDS s: ${missing[*]}"
  sleep 2
done
echo "graph_check: $launch_file: all ${#nodes[@]} nodes up: ${nodes[*]}"

timeout 30 ros2 topic echo --once "$heartbeat_topic" >/dev/null || fail "nothing on $heartbeat_topic"
timeout 60 ros2 topic echo --once "$status_topic" >/dev/null || fail "nothing on $status_topic"
echo "graph_check: $launch_file: $heartbeat_topic and $status_topic are published"

sleep "$run_seconds"
kill -0 "$launch_pid" 2>/dev/null || fail "the graph stopped while running"

kill -INT "$launch_pid"
for _ in $(seq 60); do
  kill -0 "$launch_pid" 2>/dev/null || break
  sleep 0.5
done
kill -0 "$launch_pid" 2>/dev/null && fail "ros2 launch still running 30 s after SIGINT"
code=0
wait "$launch_pid" || code=$?
launch_pid=""
grep -q "process has died" "$log" && fail "a node died (ros2 launch exit code $code)"
grep -q "Traceback" "$log" && fail "a traceback in the log (ros2 launch exit code $code)"
ended="$(grep -c "episode [0-9]* ended" "$log" || true)"
echo "graph_check: $launch_file: OK (${run_seconds} s after start-up, $ended episodes ended, ros2 launch exit code $code)"
