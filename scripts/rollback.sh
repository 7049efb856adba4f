#!/usr/bin/env bash
# Incident rollback: all production traffic back to the previous (or --to) version, no analysis; idempotent.
# Usage: scripts/rollback.sh [--to VERSION] [--reason TEXT] [--by NAME] [--dry-run]   (works from any cwd)
#        scripts/rollback.sh --target kubernetes [same options]: renders production's previous version for the
#        deployment branch, says the `kubectl argo rollouts` command to run, records it (docs/kubernetes.md)
# Runbook (step by step, exit codes, what each result line means, interrupted rollbacks): docs/rollback.md
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
for arg in "$@"; do  # --help: point at the runbook first; the command's own help follows
  case "$arg" in -h | --help) echo "Runbook: $repo/docs/rollback.md (steps, exit codes, result lines)" ;; esac
done
# Fast path first: traffic onto the warm previous version before the slow imports (the fast rollback in release/),
# then the same code as `mlrelease rollback` finishes the job (slots, aliases, audit, verification).
exec "$repo/.venv/bin/python" -m mlrelease.commands.fast_rollback "$@"
