"""`main`: every requested method on the sequence, then the report (`masllm sequential`, the recipe).

`prepare` does everything that can fail on bad input before any training: the arguments, the run
manifest of `output_dir` (`manifest`), the task sequence (its data); `command` is the entry point of
the CLI and of `recipes/sequential.py`, which prints such an error as one line instead of a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainingArguments

from ..omega.io import CONFIG_NAME, OMEGA_NAME, load_tensors
from ..tasks import TASK_KINDS, TaskSequence
from .arguments import ContinualArguments, parse_args
from .loop import run_sequence
from .manifest import check_output_dir, prepare_output_dir, resolved_config
from .output import setup_output
from .report import RunResult, build_report, format_report, write_report

logger = logging.getLogger("masllm")
INPUT_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError)


@dataclass
class Prepared:
    seq: TaskSequence
    cl_args: ContinualArguments
    training_args: TrainingArguments


def prepare(argv: list[str] | None = None) -> Prepared:
    """Arguments, output_dir's manifest, the task sequence: every input error surfaces here."""
    model_args, data_args, cl_args, training_args = parse_args(argv)
    setup_output(training_args)
    output_dir = Path(training_args.output_dir)
    config = resolved_config(model_args, data_args, cl_args, training_args)
    runs = [cl_args.run_name(m, s) for m, s in cl_args.runs()]
    action = check_output_dir(output_dir, config, runs, cl_args.overwrite_output_dir)
    with training_args.main_process_first(local=False, desc="run manifest"):
        if training_args.should_save:
            prepare_output_dir(output_dir, config, runs, action)
    seq = TASK_KINDS[data_args.kind](model_args, data_args, training_args)
    for method, _ in cl_args.runs():
        seq.check_method(method)
    return Prepared(seq, cl_args, training_args)


def execute(prepared: Prepared, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """Run every requested method on the sequence and write the report; returns report.json's content.

    The first task has no penalty whatever the method, so with --compare it is trained once and
    shared (SI trains its own)."""
    seq, cl_args, training_args = prepared.seq, prepared.cl_args, prepared.training_args
    output_dir = Path(training_args.output_dir)
    results, omegas, first_dir = [], {}, None
    for method, strength in cl_args.runs():
        run = cl_args.run_config(method, strength)
        run_dir = output_dir / run.name
        rows = run_sequence(seq, run, training_args, run_dir, first_dir, callbacks)
        first_dir = first_dir or run_dir / f"0-{seq.tasks[0].name}"
        results.append(RunResult(name=run.name, method=method, reg_lambda=run.strength, rows=rows))
        last = run_dir / f"{len(seq.tasks) - 1}-{seq.tasks[-1].name}"
        if run.mas is not None and (last / CONFIG_NAME).is_file():
            omegas[run.name] = load_tensors(last, OMEGA_NAME)
    tasks = [t.name for t in seq.tasks]
    report = build_report(results, tasks, seq.metrics, seq.primary_metric, seq.validation_metric)
    if training_args.should_save:
        write_report(report, output_dir, omegas, plots=cl_args.plots)
        print(format_report(report), flush=True)
        logger.info("Report: %s", output_dir / "report.md")
    return report


def main(argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """`prepare` then `execute`: what tests and scripts call (input errors raise)."""
    return execute(prepare(argv), callbacks)


def command(argv: list[str] | None = None) -> int:
    """The entry point of `masllm sequential` and `recipes/sequential.py`: an input error is printed
    once (by rank 0) as one line, exit status 2; errors during training keep their traceback."""
    try:
        prepared = prepare(argv)
    except INPUT_ERRORS as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"masllm sequential: error: {e}", file=sys.stderr, flush=True)
        return 2
    execute(prepared)
    return 0
