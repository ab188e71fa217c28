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
scripts/run_tests.sh "$@"
echo "check: all gates passed in $(( $(date +%s) - start )) s"
