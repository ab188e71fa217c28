#!/usr/bin/env bash
# The test suite, in two pytest processes; arguments go to both (paths, -k, -x, ...). Run inside the env.
#
# Tests that host franky-sim in the test process get a fresh one: late in a long session they
# faulted now and then (franky's planner; a reset whose joint motion never ended) where they pass
# alone. Exit code 5 (the arguments selected none of a process's tests) is accepted.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for arg in "$@"; do
    case "$arg" in
        -m | -m*)
            echo "run_tests.sh: a -m selection would replace the split by marker;" \
                "run python -m pytest -m ... instead" >&2
            exit 2
            ;;
    esac
done
python -m pytest -m "not sim_in_process" "$@" || [ $? -eq 5 ]
echo "== pytest: franky-sim in the test process"
python -m pytest -m sim_in_process "$@" || [ $? -eq 5 ]
