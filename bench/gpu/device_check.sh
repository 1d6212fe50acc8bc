#!/usr/bin/env bash
# Issue 5's GPU evidence that needs no SGLang, in one command on a GPU machine
# (about 5-8 minutes on an H100): versions, the sgl-kernel-ext build, the tests
# marked gpu (green-context table, SM-id probe, ordering, per-split graphs) and
# the microbench, whose samples.jsonl fits a measured profile (bench/gpu/README.md).
# Needs torch, pytest and nvcc there; writes at most 8 files.
#
#   bash bench/gpu/device_check.sh OUT_DIR        (the device tool: OUT_DIR=$OUT)
#
# Commit what it writes under bench/results/<date>-<gpu>/ with a README that
# says what was and was not measured.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: device_check.sh OUT_DIR}
mkdir -p "$out"
py=${PYTHON:-python3}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  "$py" -c 'import cuda.bindings; print("cuda-bindings", cuda.bindings.__version__)' 2>&1
  nvcc --version | tail -1
  git rev-parse HEAD 2>/dev/null || true
} > "$out/versions.txt" 2>&1

"$py" sgl-kernel-ext/build.py > "$out/ext-build.log" 2>&1
echo "ext build: exit $?" >> "$out/versions.txt"

PYTHONPATH=python "$py" -m pytest -q -m gpu -p no:cacheprovider \
  test/gpu test/unit/test_kernel_ext.py test/unit/test_mux_microbench.py \
  > "$out/gpu-tests.log" 2>&1
echo "gpu tests: exit $?" >> "$out/versions.txt"

PYTHONPATH=python "$py" bench/gpu/mux_microbench.py --out "$out" ${MICROBENCH_ARGS:-} \
  > "$out/microbench.log" 2>&1
echo "microbench: exit $?" >> "$out/versions.txt"
cat "$out/versions.txt"
tail -n 3 "$out/gpu-tests.log" "$out/microbench.log"
