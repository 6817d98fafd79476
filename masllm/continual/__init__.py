"""The continual loop: a task sequence learnt one task at a time, every method, and the report.

- `arguments`: the run's dataclasses (`HfArgumentParser`, YAML defaults), one `RunConfig` per run;
- `methods`: what each method adds to the loop (`Method`, `METHODS`, `method_of`);
- `loop`: `run_sequence` (train -> importance -> evaluate -> save, with resume); `imm_step`: IMM;
- `run`: `main(argv)` (raises on bad input) and `command(argv)`, what `masllm sequential` and
  `recipes/sequential.py` call (bad input: one line, exit status 2);
- `manifest`: `run_manifest.json`, so that a rerun never mixes results of two configurations;
- `output`: what a run prints (one line per phase, the long phases' progress bars, no noise);
- `metrics`: R and ACC / BWT / FWT / forgetting; `report`: report.json / report.md / plots.
- `selection`: lambda chosen on validation data (`select_lambda`, `select_from_report`).
"""

from .arguments import ContinualArguments, DataArguments, ModelArguments, RunConfig, make_parser, parse_args
from .imm_step import IMM_DIR, IMM_FISHER
from .loop import ROW_FILE, run_sequence
from .methods import FINETUNE, METHODS, Method, method_of, methods
from .run import command, main
from .selection import Selection, select_from_report, select_lambda

__all__ = [
    "FINETUNE",
    "IMM_DIR",
    "IMM_FISHER",
    "METHODS",
    "ROW_FILE",
    "ContinualArguments",
    "DataArguments",
    "Method",
    "ModelArguments",
    "RunConfig",
    "Selection",
    "command",
    "main",
    "make_parser",
    "method_of",
    "methods",
    "parse_args",
    "run_sequence",
    "select_from_report",
    "select_lambda",
]
