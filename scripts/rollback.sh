#!/usr/bin/env bash
# Incident rollback: all production traffic back to the previous (or --to) version, no analysis; idempotent.
# Usage: scripts/rollback.sh [--to VERSION] [--reason TEXT] [--by NAME] [--dry-run]   (works from any cwd)
set -euo pipefail
# the command's start, to the microsecond, for "traffic moved N s after the command started" (bash 5, no fork)
export MLRELEASE_COMMAND_STARTED="${EPOCHREALTIME:-}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if [ ! -x "$repo/.venv/bin/mlrelease" ]; then
  echo "rollback: $repo/.venv/bin/mlrelease not found; run \`make setup\` first" >&2
  exit 2
fi
export MLRELEASE_HOME="${MLRELEASE_HOME:-$repo}"
# Fast path first: traffic onto the warm previous version before the slow imports (registry/fast_rollback.py),
# then the same code as `mlrelease rollback` finishes the job (slots, aliases, audit, verification).
exec "$repo/.venv/bin/python" -m registry.fast_rollback "$@"
