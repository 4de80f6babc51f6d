#!/usr/bin/env bash
# Run both demo models under JAX on a GPU machine without TensorFlow and print latency/throughput.
# Needs the keras wheel (+ namex, optree) on PYTHONPATH there; see docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export KERAS_BACKEND=jax XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -m cvs_core.cli ensure-models
python3 bench/gpu_bench.py "$@"
