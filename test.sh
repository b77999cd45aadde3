#!/usr/bin/env bash
# The test suite: install into .venv if needed, then run pytest (exit 5, "no tests", is a failure).
set -uo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh --test || exit 1
.venv/bin/python -m pytest -q -ra "$@"
rc=$?
[ $rc -eq 5 ] && echo "pytest collected no tests: failing" >&2
exit $rc
