"""`main`: every requested method on the sequence, then the report (`masllm sequential`, the recipe)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..omega.io import CONFIG_NAME, OMEGA_NAME, load_tensors
from ..tasks import TASK_KINDS
from .arguments import parse_args
from .loop import run_sequence
from .report import RunResult, build_report, format_report, write_report


def main(argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """Run every requested method on the sequence and write the report; returns report.json's content.

    The first task has no penalty whatever the method, so with --compare it is trained once and
    shared (SI trains its own)."""
    model_args, data_args, cl_args, training_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    seq = TASK_KINDS[data_args.kind](model_args, data_args, training_args)
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
    report = build_report(results, tasks, seq.metrics, seq.primary_metric)
    if training_args.should_save:
        write_report(report, output_dir, omegas, plots=cl_args.plots)
        print(format_report(report), flush=True)
        print(f"Report: {output_dir / 'report.md'}", flush=True)
    return report
