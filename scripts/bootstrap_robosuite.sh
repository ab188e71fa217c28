#!/usr/bin/env bash
# Set up the robosuite benchmark's own venv (bench/robosuite_lift), without root; safe to run
# again (it only reinstalls when requirements/robosuite.txt or this script changed).
# robosuite needs mujoco 3.3.x and numpy < 2, which the main venv (mujoco 4, numpy 2, the ROS
# wheels) cannot hold, so it lives in $PLD_ROBOSUITE_VENV (default .venv-robosuite):
#   1. the venv, CPU torch first and alone (constrained, so nothing pulls a CUDA build), then
#      everything pinned in requirements/robosuite.txt;
#   2. a .pth file putting src/pld_ros on sys.path: `import pld_ros.core`, `pld_ros.models` work
#      without installing the package (whose install would pull ROS and the drivers);
#   3. a smoke check that robosuite, torch and the ROS-free core import together.
# `scripts/in_robosuite_env.sh CMD` runs a command in it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PLD_ROBOSUITE_VENV:-$ROOT/.venv-robosuite}"
PYTHON="${PLD_PYTHON:-python3}"
REQUIREMENTS="$ROOT/requirements/robosuite.txt"
cd "$ROOT"
start=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap_robosuite: creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

stamp="$VENV/.pld-bootstrap-robosuite"
want="$(cat "$REQUIREMENTS" scripts/bootstrap_robosuite.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap_robosuite: installing dependencies"
  "${PIP[@]}" install -q -c "$REQUIREMENTS" torch
  "${PIP[@]}" install -q -c "$REQUIREMENTS" -r "$REQUIREMENTS"
  echo "$want" > "$stamp"
else
  echo "bootstrap_robosuite: dependencies up to date"
fi

site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$ROOT/src/pld_ros" > "$site/pld_ros_src.pth"

MUJOCO_GL="${MUJOCO_GL:-egl}" "$VENV/bin/python" -c \
  'import robosuite, torch, pld_ros.core.episode, pld_ros.models.residual_actor; print("bootstrap_robosuite: robosuite", robosuite.__version__, "torch", torch.__version__)'
echo "bootstrap_robosuite: done in $(( $(date +%s) - start )) s"
