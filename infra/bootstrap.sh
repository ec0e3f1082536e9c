#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian/Ubuntu machine. Idempotent: a second run only
# checks. `--dev` adds what the tests need (headless Chromium, docker-compose for validating the compose
# file, and the dev Python packages).
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[ "${1:-}" = "--dev" ] && dev=1

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

apt_pkgs=()
have mosquitto || apt_pkgs+=(mosquitto)
have mosquitto_pub || apt_pkgs+=(mosquitto-clients)
have redis-server || apt_pkgs+=(redis-server)
if [ "$dev" = 1 ]; then
  have chromium || apt_pkgs+=(chromium)
  have docker-compose || apt_pkgs+=(docker-compose)
fi
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PY="$candidate"; break; fi
  done
fi
[ -n "$PY" ] || { echo "bootstrap: Python 3.11 is required" >&2; exit 1; }
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "bootstrap: $PY is not Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
"$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_pkgs+=(python3-venv)

if [ "${#apt_pkgs[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "bootstrap: apt-get install ${apt_pkgs[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
extras=""
[ "$dev" = 1 ] && extras="[dev]"
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-$dev"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: pip install -e .$extras"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".$extras"
  rm -f .venv/.installed-*
  touch "$stamp"
fi
echo "bootstrap: ok"
