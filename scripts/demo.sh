#!/usr/bin/env bash
# The README's first command: set up, then fine-tuning vs MAS on text every Python install carries
# (a small GPT-2 learns Python's reference docs, then the stdlib's source code, then license texts).
# About 5 minutes on 2 CPU cores; the closing table says how much less MAS forgot.
# Extra arguments go to the recipe, e.g. `bash scripts/demo.sh --reg_lambda 0.001`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${MASLLM_VENV:-.venv}/bin/activate"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
config=accelerate_configs/cpu.yaml
if [ -f accelerate_configs/single_gpu.yaml ] && python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  config=accelerate_configs/single_gpu.yaml
fi
exec accelerate launch --config_file "$config" recipes/sequential.py --config recipes/configs/demo.yaml "$@"
