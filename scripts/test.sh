#!/usr/bin/env bash
# Set up (if needed) and run the test suite: fast unit tests plus the 2-process distributed tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${MASLLM_VENV:-.venv}/bin/activate"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
ruff check masllm recipes bench tests
ruff format --check masllm recipes bench tests
python -m pytest -q "$@"
