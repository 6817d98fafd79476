#!/usr/bin/env bash
# Set up masllm in ./.venv (idempotent), without ever pulling CUDA wheels on a machine with no GPU.
#
# - torch already in the environment (a GPU user's build, say) is kept: it is pinned while the
#   other packages install, so no dependency can replace it.
# - otherwise: with an NVIDIA GPU, plain `pip install torch`; without one, torch==$TORCH_VERSION
#   (a CPU wheel where pip is configured with one, or from $TORCH_INDEX_URL, e.g.
#   https://download.pytorch.org/whl/cpu).
# Set MASLLM_VENV=path to use another virtual environment (created if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MASLLM_VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"

stamp="$VENV/.masllm-installed"
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && python -c "import masllm" 2>/dev/null; then
  exit 0
fi

if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install torch
  elif [ -n "${TORCH_INDEX_URL:-}" ]; then
    pip install "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
  else
    pip install "torch==$TORCH_VERSION"
  fi
fi
constraints="$VENV/torch-constraint.txt"
python -c "import torch; print('torch==' + torch.__version__)" > "$constraints"
pip install -c "$constraints" -e ".[dev]"
echo "$want" > "$stamp"
