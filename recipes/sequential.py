"""Continual training on a sequence of domains with MAS, and the forgetting report.

Usage:
    accelerate launch [--config_file accelerate_configs/cpu.yaml] recipes/sequential.py \\
        --config recipes/configs/demo.yaml [--key value ...]

The same as `masllm sequential --config ...` (the loop lives in `masllm.continual`). The YAML file
gives defaults for every argument; command-line flags override it. `--method finetune|l2|mas|si|lwf|...`
picks the method; `--compare finetune,mas,l2=0.01` runs several on the same sequence (a `=value`
sets that run's strength) and puts them in one report. Rerunning the same command resumes.
"""

import sys

from masllm.continual import command
from masllm.distributed import exit_process

if __name__ == "__main__":
    if status := command(sys.argv[1:]):  # bad input: one line on stderr, status 2
        sys.exit(status)
    exit_process()  # multi-process: wait for rank 0's report, leave without the gloo teardown race
