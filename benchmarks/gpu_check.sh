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

# The first Python that has torch (a pyenv shim may exist without its version).
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    for candidate in python3.12 python3 python; do
        if "$candidate" -c "import torch" >/dev/null 2>&1; then PY="$candidate"; break; fi
    done
fi
PY="${PY:-python3}"
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

set +e  # run both steps whatever the first one returns; report both at the end
# 1. Correctness (2-4 minutes, most of it compiling the generated kernels).
timeout 270 "$PY" benchmarks/gpu_check.py 2>&1 | tee "$RESULTS/cuda_check.txt"
check=${PIPESTATUS[0]}

# 2. Benchmark (every backend, every case, end to end); medians of 20 rounds.
# The two timeouts keep the whole script under 8 minutes (270 + 190 s).
timeout 190 "$PY" -m batchnorm.cli bench --device cuda --repeats 20 \
    --out "$RESULTS/cuda.json" --md "$RESULTS/cuda.md" 2>&1 | tee "$RESULTS/cuda_bench.txt"
bench=${PIPESTATUS[0]}
set -e

echo "gpu_check: correctness exit $check, benchmark exit $bench; results in $RESULTS"
exit $(( check != 0 || bench != 0 ))
