#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one device call (a few minutes on an H100).
#
# The device machine has torch, torchvision, numpy, scipy, scikit-learn, Pillow and threadpoolctl, but not
# pydantic, pydantic-settings or python-dotenv, and cannot download. Once per checkout, here (pip reaches the package registry here; .whl/ is
# git-ignored):  bash bench/gpu_checks.sh --fetch-wheels
# then the device call: command "bash bench/gpu_checks.sh", carry [".whl"], timeout_s 420 (each step has its own
# timeout below, 360 s in all, so a hung step cannot spend the lease; the rest covers the install and imports).
# Output: the log and bench/gpu_checks.py's JSON under $OUT (or ./gpu-out outside the device tool).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then  # pydantic and what it needs, pinned as in pyproject.toml
  rm -rf .whl && mkdir -p .whl
  for pkg in pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
             typing-extensions==4.16.0 pydantic-settings==2.16.3 python-dotenv==1.2.4; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$pkg" || exit 1
  done
  ls .whl
  exit 0
fi

out="${OUT:-gpu-out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
# what fit() imports, before any device time goes into the checks: a missing wheel fails here in seconds
python3 -c "import nc_core.settings, nc_core.train, nc_core.metrics" || { echo "imports failed: fetch the wheels"; exit 1; }
{
  nvidia-smi -L
  timeout 150 python3 bench/gpu_checks.py --device cuda --json "$out/gpu_checks.json"; checks=$?  # fit fp32/tf32/bf16
  timeout 60 python3 bench/train_bench.py --device cuda --epochs 3 --repeats 5    # MLP: goal >= 20x, eval <= 1.4x
  timeout 90 python3 bench/train_bench.py --device cuda --workload resnet18 --epochs 2 --repeats 3 --eval-n 10000  # >= 3x
  timeout 60 python3 bench/train_bench.py --device cuda --workload resnet18 --epochs 2 --skip-eval --workers 8
  exit $checks
} 2>&1 | tee "$out/gpu_checks.log"
