#!/usr/bin/env bash
# Run one command inside the robosuite benchmark's venv (scripts/bootstrap_robosuite.sh makes it),
# with the repository root on PYTHONPATH so that `python -m bench.robosuite_lift.run ...` finds the bench package.
set -eo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PLD_ROBOSUITE_VENV:-$ROOT/.venv-robosuite}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "in_robosuite_env: no venv at $VENV; run scripts/bootstrap_robosuite.sh first" >&2
  exit 1
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
# Offscreen rendering on the CPU (Mesa llvmpipe); robosuite reads it when it first imports mujoco.
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$@"
