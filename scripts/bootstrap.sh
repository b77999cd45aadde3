#!/usr/bin/env bash
# Create/refresh .venv with the pinned project dependencies (idempotent; a stamp skips repeat installs).
# Usage: scripts/bootstrap.sh [--test]   (--test also installs Debian chromium for the browser tests if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0; [ "${1:-}" = "--test" ] && want_test=1

py="${PYTHON:-}"
if [ -z "$py" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then py=$cand; break; fi
  done
fi
[ -n "$py" ] || { echo "ncsweep needs Python 3.11 (python3.11 not found; set PYTHON=/path/to/python3.11)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=".venv/.ncsweep-stamp-$(sha256sum < pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "installing ncsweep and its pinned dependencies into .venv (first run takes a few minutes) ..."
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test,parquet]"
  rm -f .venv/.ncsweep-stamp-*; touch "$stamp"
fi

if [ $want_test = 1 ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian chromium for the dashboard tests ..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "note: /usr/bin/chromium is missing; install Debian's chromium to run the dashboard tests" >&2
  fi
fi
