#!/usr/bin/env bash
# The main job: install into .venv if needed, start the embedded stack and run the example sweep.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/bootstrap.sh
exec .venv/bin/ncsweep up --example "$@"
