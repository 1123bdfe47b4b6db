#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py): SmolLM2-135M through SPA in bf16 with HF generation, with vLLM
# generation, and one training stage under FSDP2 in one process; tokens/s, peak memory and the plan's prediction
# per stage. --cpu: the same steps at tiny size on CPU (the test suite runs it). Run from anywhere.
#   bash scripts/gpu_check.sh [--cpu] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" scripts/gpu_check.py "$@"
