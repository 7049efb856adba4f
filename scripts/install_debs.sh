#!/usr/bin/env bash
# Installs the Debian packages mlrelease drives (nginx for traffic splitting, buildah and mmdebstrap for the
# image, wrk for benchmarks, PostgreSQL for the team-registry test's MLflow server, Prometheus and promtool for the
# metrics provider and alert rules, headless Chromium for the release report's browser test) when a command is
# missing.
# Needs root, as on the project's machines.
set -euo pipefail
declare -A pkg_for=([nginx]=nginx-light [buildah]=buildah [wrk]=wrk [mmdebstrap]=mmdebstrap [prometheus]=prometheus
  [promtool]=prometheus [chromium]=chromium)
missing=()
for cmd in "${!pkg_for[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${pkg_for[$cmd]}")
done
# Debian keeps PostgreSQL's server programs off PATH, in /usr/lib/postgresql/VERSION/bin
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)  # one package may provide several commands
if [ "$(id -u)" -ne 0 ]; then
  # a CI runner (GitHub's among them) has passwordless sudo: use it rather than fail `make setup`
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    exec sudo -n "$0" "$@"
  fi
  echo "install_debs: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "install_debs: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
