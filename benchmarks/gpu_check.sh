#!/usr/bin/env bash
# One short GPU check (issue 12). On a machine with CUDA: the CUDA tests, then per-pair network time (float32 and
# bf16 autocast) and matching time for the ViT-Large MASt3R with random weights, then the alignment of 32 views at
# 384x512 on CUDA (autograd twin) against the CPU kernel. Without CUDA it says so and exits 0.
#   benchmarks/gpu_check.sh            (PY=... to use another interpreter; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device on this machine ($(uname -m)); nothing to check"
    exit 0
fi
"$PY" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
echo "== CUDA tests"
"$PY" -m pytest -q -m '' -k cuda tests/
echo "== network + matching per pair, float32"
"$PY" benchmarks/bench_inference.py --device cuda --n-images 10 --pairs 10 --no-baseline
echo "== network + matching per pair, bf16 autocast"
"$PY" benchmarks/bench_inference.py --device cuda --n-images 10 --pairs 10 --no-baseline --autocast bf16
echo "== alignment, 32 views: CUDA (autograd twin) vs the CPU kernel"
"$PY" benchmarks/bench_align.py --n 32 --device cuda
"$PY" benchmarks/bench_align.py --n 32 --device cpu
