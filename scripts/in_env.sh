#!/usr/bin/env bash
# Run one command inside the project's environment (see scripts/env.sh).
set -eo pipefail
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec "$@"
