#!/usr/bin/env bash
# Create .venv and install Hi3D with its test dependencies (CPU or CUDA machines).
# Usage: bash scripts/setup.sh            (PYTHON=python3.11 bash scripts/setup.sh to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
# torch first, pinned to the release this project is tested with (torchvision must match it).
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import torch, sgm; print(f'hi3d {sgm.__version__} ready: torch {torch.__version__}, cuda available: {torch.cuda.is_available()}')"
