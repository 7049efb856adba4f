#!/usr/bin/env bash
# Incident rollback: all production traffic back to the previous (or --to) version, no analysis; idempotent.
# Usage: scripts/rollback.sh [--to VERSION] [--reason TEXT] [--by NAME] [--dry-run]   (works from any cwd)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if [ ! -x "$repo/.venv/bin/mlrelease" ]; then
  echo "rollback: $repo/.venv/bin/mlrelease not found; run \`make setup\` first" >&2
  exit 2
fi
export MLRELEASE_HOME="${MLRELEASE_HOME:-$repo}"
# The release commands alone (same code as `mlrelease rollback`, without importing the other command groups).
exec "$repo/.venv/bin/python" -m mlrelease.commands.release rollback "$@"
