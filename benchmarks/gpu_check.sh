#!/usr/bin/env bash
# On a CUDA machine: check every BN backend against float64 references, then
# benchmark them, in one go and in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh            # results in benchmarks/results/ (or $OUT)
#
# Needs a Python (3.12 or $PYTHON) with a CUDA build of torch and, for the
# "triton" backend, triton. The project itself is used from src/ (PYTHONPATH), so
# nothing is downloaded; if torch is missing, install a CUDA build first.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-$(command -v python3.12 || command -v python3)}"
RESULTS="${OUT:-benchmarks/results}"
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'EOF'
import sys
try:
    import torch
except ImportError:
    sys.exit("gpu_check: torch is not installed for this Python")
if not torch.cuda.is_available():
    sys.exit("gpu_check: CUDA is not available")
try:
    import triton
    version = triton.__version__
except ImportError:
    version = "not installed (the triton backend is skipped)"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, "
      f"triton {version}")
EOF

# 1. Correctness (about 2 minutes, most of it compiling the generated kernels).
timeout 240 "$PY" benchmarks/gpu_check.py 2>&1 | tee "$RESULTS/cuda_check.txt"
check=${PIPESTATUS[0]}

# 2. Benchmark (every backend, every case, end to end); medians of 30 rounds.
timeout 220 "$PY" -m batchnorm.cli bench --device cuda --repeats 30 \
    --out "$RESULTS/cuda.json" --md "$RESULTS/cuda.md" 2>&1 | tee "$RESULTS/cuda_bench.txt"
bench=${PIPESTATUS[0]}

echo "gpu_check: correctness exit $check, benchmark exit $bench; results in $RESULTS"
exit $(( check != 0 || bench != 0 ))
