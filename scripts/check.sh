#!/usr/bin/env bash
# The quality gates, in the order that fails fastest: lint, types, tests. Run inside the env.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
echo "== ruff"
ruff check src tests bench launch scripts
ruff format --check src tests bench launch scripts
echo "== mypy"
mypy
echo "== pytest"
python -m pytest -m "not sim_in_process" "$@"
# Tests that host franky-sim in the test process get a fresh one: late in a long session they
# faulted now and then (franky's planner; a reset whose joint motion never ended) where they
# pass alone. Exit code 5: the arguments selected none of them.
echo "== pytest: franky-sim in the test process"
python -m pytest -m sim_in_process "$@" || [ $? -eq 5 ]
echo "check: all gates passed in $(( $(date +%s) - start )) s"
